//! The end-to-end scenarios, written once against [`crate::stack`] and run for every pair of
//! a client stack `C` and a server stack `S` (and the client-only ones for every client
//! stack) by `tests/end_to_end.rs`. Everything runs on loopback sockets.
//!
//! Scenarios that wait for the engine's timers shorten them through [`Config`], so that the
//! whole list stays fast on the wall clock; what a request has to wait for, the scenario
//! releases through the application's gate rather than by sleeping.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use coap_proto::msg::{Code, ContentFormat, MessageType, OptionNumber};
use coap_proto::{Config, Response};

use crate::stack::{
    eventually, pattern, quick_config, silent_peer, AppEvent, PendingResponse, Req, ReqOption,
    Stack, StackError, TestClient, TestObservation, TestServer,
};

/// A client of stack `C` on 127.0.0.1 with the default configuration.
fn bind_client<C: Stack>() -> C::Client {
    bind_client_with::<C>(Config::default())
}

/// A client of stack `C` on 127.0.0.1 with `config`.
fn bind_client_with<C: Stack>(config: Config) -> C::Client {
    C::client("127.0.0.1:0", config)
        .unwrap_or_else(|e| panic!("{}: a client on 127.0.0.1: {e}", C::NAME))
}

/// A server of stack `S` on 127.0.0.1 with the default configuration.
fn start_server<S: Stack>() -> S::Server {
    start_server_with::<S>(Config::default())
}

/// A server of stack `S` on 127.0.0.1 with `config`.
fn start_server_with<S: Stack>(config: Config) -> S::Server {
    S::serve("127.0.0.1:0", config)
        .unwrap_or_else(|e| panic!("{}: a server on 127.0.0.1: {e}", S::NAME))
}

/// The URI of `path` (with any query) on `server`.
fn at(server: &impl TestServer, path: &str) -> String {
    format!("coap://{}{path}", server.addr())
}

/// The payload of a response that must be text.
fn text(rsp: &crate::stack::Rsp) -> &str {
    rsp.payload_str().expect("a UTF-8 payload")
}

/// Every method reaches its handler with its payload; an answer at once is piggybacked on
/// the ACK; a code that is no method fails before it is sent; NON is answered NON; ping.
pub fn every_method_reaches_its_handler<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let uri = at(&server, "/echo");
    let cases = [
        (Code::GET, "", "0.01 /echo "),
        (Code::POST, "p", "0.02 /echo p"),
        (Code::PUT, "u", "0.03 /echo u"),
        (Code::DELETE, "", "0.04 /echo "),
        (Code::FETCH, "f", "0.05 /echo f"),
        (Code::PATCH, "pa", "0.06 /echo pa"),
        (Code::IPATCH, "ip", "0.07 /echo ip"),
        (Code::new(0, 20), "", "0.20 /echo "),
    ];
    for (method, payload, expected) in cases {
        let rsp = client
            .send(Req::new(method, &uri).payload(payload))
            .unwrap();
        assert_eq!(rsp.code(), Code::CONTENT, "{method}");
        assert_eq!(rsp.payload_str(), Some(expected));
        assert_eq!(rsp.peer, server.addr());
        assert_eq!(rsp.uri, uri);
        // Answered at once: piggybacked on the ACK (RFC 7252 §5.2.1).
        assert_eq!(rsp.message_type(), MessageType::Ack, "{method}");
    }
    let err = client.send(Req::new(Code::CONTENT, &uri)).unwrap_err();
    assert_eq!(err, StackError::NotARequest(Code::CONTENT));
    // A NON request gets a NON response (RFC 7252 §5.2.3).
    let rsp = client.send(Req::get(&uri).non()).unwrap();
    assert_eq!(rsp.message_type(), MessageType::Non);
    assert_eq!(rsp.payload_str(), Some("0.01 /echo "));
    client.ping(&uri).unwrap();
}

/// Every option a request builder sets arrives at the handler as set.
pub fn request_builder_options_arrive<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let req = Req::post(at(&server, "/opts?a=1"))
        .payload("{}")
        .with(ReqOption::ContentFormat(ContentFormat::JSON))
        .with(ReqOption::Accept(ContentFormat::CBOR))
        .with(ReqOption::Etag(vec![1, 2]))
        .with(ReqOption::Etag(vec![3]))
        .with(ReqOption::IfMatch(vec![0xaa]))
        .with(ReqOption::IfNoneMatch)
        .with(ReqOption::Query("b=2".into()))
        .with(ReqOption::Str(OptionNumber(65000), "str".into()))
        .with(ReqOption::Uint(OptionNumber(65004), 300))
        .with(ReqOption::Opaque(OptionNumber(65008), vec![0xde, 0xad]))
        .non()
        .timeout(Duration::from_secs(10));
    let rsp = client.send(req).unwrap();
    assert_eq!(
        text(&rsp),
        "cf=Some(50) accept=Some(60) etags=[\"0102\", \"03\"] ifm=[\"aa\"] inm=true \
         q=[\"a=1\", \"b=2\"] s=Some(\"str\") u=Some(300) x=Some(\"dead\") t=NON"
    );
    assert_eq!(rsp.message_type(), MessageType::Non);
}

/// 4.04 for a path nobody serves, 4.05 for a method the route lacks, and 4.04 from a plain
/// client (of the server's crate) for any request.
pub fn unknown_paths_and_methods<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let rsp = client.send(Req::get(at(&server, "/missing"))).unwrap();
    assert_eq!(rsp.code(), Code::NOT_FOUND);
    let rsp = client.send(Req::put(at(&server, "/only-get"))).unwrap();
    assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
    let plain = bind_client::<S>();
    let rsp = client
        .send(Req::get(format!("coap://{}/x", plain.local_addr())))
        .unwrap();
    assert_eq!(rsp.code(), Code::NOT_FOUND);
}

/// Handler errors become their codes and texts; a handler that panics, at once or after a
/// wait, is answered 5.00 and the server goes on, keeping nothing of it.
pub fn handler_errors_and_panics<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let rsp = client.send(Req::put(at(&server, "/cf"))).unwrap();
    assert_eq!(rsp.code(), Code::UNSUPPORTED_CONTENT_FORMAT);
    let json = ReqOption::ContentFormat(ContentFormat::JSON);
    let rsp = client
        .send(Req::put(at(&server, "/cf")).with(json))
        .unwrap();
    assert_eq!(rsp.code(), Code::CHANGED);
    let rsp = client.send(Req::get(at(&server, "/bad"))).unwrap();
    assert_eq!(rsp.code(), Code::BAD_REQUEST);
    assert_eq!(rsp.payload_str(), Some("missing ?id"));
    let rsp = client.send(Req::get(at(&server, "/boom"))).unwrap();
    assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR);
    assert_eq!(rsp.payload_str(), Some("database down"));
    for path in ["/panic/now", "/panic/later"] {
        let rsp = client.send(Req::get(at(&server, path))).unwrap();
        assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR, "{path}");
    }
    // The server survived both kinds of panic and keeps nothing of them.
    assert!(server.pending_incoming().unwrap().is_empty());
    let rsp = client.send(Req::get(at(&server, "/hello"))).unwrap();
    assert_eq!(rsp.payload_str(), Some("hello"));
}

/// A handler slower than the empty-ACK delay: the server acknowledges first, which stops the
/// client's retransmissions, and the response comes in a CON of its own (RFC 7252 §5.2.2);
/// a NON request gets a NON response without any ACK.
pub fn slow_handlers_get_separate_responses<C: Stack, S: Stack>() {
    let mut config = Config::default();
    config.empty_ack_delay = Duration::from_millis(10);
    let server = start_server_with::<S>(config);
    // Without the empty ACK (due after 10 ms) the client would retransmit after 60 ms.
    let client = bind_client_with::<C>(quick_config(Duration::from_millis(60), 4));
    let start = Instant::now();
    let rsp = client.send(Req::get(at(&server, "/slow?ms=100"))).unwrap();
    assert_eq!(rsp.payload_str(), Some("done"));
    assert_eq!(rsp.message_type(), MessageType::Con);
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert_eq!(client.stats().unwrap().retransmissions, 0);
    let rsp = client
        .send(Req::get(at(&server, "/slow?ms=20")).non())
        .unwrap();
    assert_eq!(rsp.message_type(), MessageType::Non);
    assert_eq!(rsp.payload_str(), Some("done"));
}

/// A deferred response: the request is listed as pending with the responder's id, the server
/// sends the empty ACK, and the answer from another task comes as a CON. A responder dropped
/// unused answers 5.00; one that comes after the handler answered gets `AlreadyAnswered`.
pub fn deferred_responses_through_a_responder<C: Stack, S: Stack>() {
    let mut config = Config::default();
    config.empty_ack_delay = Duration::from_millis(10);
    let server = start_server_with::<S>(config);
    let client = bind_client::<C>();
    let pending = client.start(Req::get(at(&server, "/deferred")));
    let AppEvent::Deferred(id) = server.probe().event() else {
        panic!("expected the deferred request's id");
    };
    let listed = server.pending_incoming().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].uri, "/deferred");
    // The empty ACK is the only datagram the server has sent so far.
    eventually("the empty ACK", || {
        server.stats().unwrap().datagrams_sent == 1
    });
    server.probe().release();
    let rsp = pending.wait().unwrap();
    assert_eq!(rsp.payload_str(), Some("from another task"));
    assert_eq!(rsp.message_type(), MessageType::Con);
    assert!(server.pending_incoming().unwrap().is_empty());

    let rsp = client.send(Req::get(at(&server, "/dropped"))).unwrap();
    assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR);
    let rsp = client.send(Req::get(at(&server, "/twice"))).unwrap();
    assert_eq!(rsp.payload_str(), Some("first"));
    assert_eq!(
        server.probe().event(),
        AppEvent::SecondAnswer(Err(StackError::AlreadyAnswered))
    );
    assert!(server.pending_incoming().unwrap().is_empty());
}

/// The hrefs of a link-format document, sorted.
fn hrefs(doc: &str) -> Vec<&str> {
    let mut links: Vec<&str> = doc
        .split(',')
        .filter_map(|link| link.split(';').next())
        .collect();
    links.sort_unstable();
    links
}

/// `/.well-known/core` lists the routes with their attributes, nested ones with their
/// prefix, observable ones marked `obs`, hidden ones not at all; the queries filter
/// (RFC 6690 §4.1).
pub fn well_known_core_lists_routes_with_filtering<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let wkc = at(&server, "/.well-known/core");
    let get = |query: &str| client.send(Req::get(format!("{wkc}{query}"))).unwrap();

    let rsp = get("");
    assert_eq!(rsp.code(), Code::CONTENT);
    assert_eq!(rsp.content_format(), Some(ContentFormat::LINK_FORMAT));
    let all = hrefs(text(&rsp));
    for href in [
        "</hello>",
        "</sensors/temp>",
        "</sensors/hum>",
        "</sensors/counter>",
    ] {
        assert!(all.contains(&href), "{href} in {all:?}");
    }
    assert!(!text(&rsp).contains("secret"), "{}", text(&rsp));

    let rsp = get("?rt=temperature-c");
    let doc = text(&rsp);
    assert!(doc.starts_with("</sensors/temp>"), "{doc}");
    assert!(
        doc.contains("obs") && doc.contains("if=\"sensor\""),
        "{doc}"
    );
    assert_eq!(hrefs(doc), ["</sensors/temp>"]);
    assert_eq!(
        get("?rt=hum*").payload_str(),
        Some("</sensors/hum>;rt=\"humidity\";title=\"Humidity\"")
    );
    // An observable route is marked without being told.
    assert_eq!(
        get("?rt=counter").payload_str(),
        Some("</sensors/counter>;rt=\"counter\";obs")
    );
    let rsp = get("?obs");
    assert_eq!(hrefs(text(&rsp)), ["</sensors/counter>", "</sensors/temp>"]);
    assert_eq!(get("?href=/hello").payload_str(), Some("</hello>"));
    let none = get("?rt=nothing");
    assert_eq!(none.code(), Code::CONTENT);
    assert!(none.payload().is_empty());
    assert_eq!(get("?=x").code(), Code::BAD_REQUEST);
    let rsp = client.send(Req::post(&wkc)).unwrap();
    assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
}

/// A catch-all route gets the rest of the path, an exact route wins over it, and an ETag
/// the client already holds is answered 2.03 Valid without payload.
pub fn catch_all_routes_and_etags<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let rsp = client
        .send(Req::get(at(&server, "/files/a/b.txt")))
        .unwrap();
    assert_eq!(rsp.payload_str(), Some("file a/b.txt"));
    let etag = rsp.etag().expect("an ETag").to_vec();
    let rsp = client.send(Req::get(at(&server, "/files"))).unwrap();
    assert_eq!(rsp.payload_str(), Some("file "));
    let rsp = client
        .send(Req::get(at(&server, "/files/special")))
        .unwrap();
    assert_eq!(rsp.payload_str(), Some("exact route wins"));
    let valid = Req::get(at(&server, "/files/a/b.txt")).with(ReqOption::Etag(etag.clone()));
    let rsp = client.send(valid).unwrap();
    assert_eq!(rsp.code(), Code::VALID);
    assert!(rsp.payload().is_empty());
    assert_eq!(rsp.etag(), Some(&etag[..]));
    let other = Req::get(at(&server, "/files/other")).with(ReqOption::Etag(etag));
    assert_eq!(client.send(other).unwrap().code(), Code::CONTENT);
}

/// Bodies larger than a block go both ways, block-wise (RFC 7959), and arrive whole.
pub fn large_bodies_both_ways<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    // Downloads in Block2 blocks, reassembled by the client's engine.
    for len in [1024, 1025, 20_000, 100_000] {
        let rsp = client
            .send(Req::get(at(&server, &format!("/big?len={len}"))))
            .unwrap();
        assert_eq!(rsp.code(), Code::CONTENT, "{len}");
        assert_eq!(rsp.payload().len(), len);
        assert!(rsp.payload() == &pattern(len)[..], "{len}");
    }
    // Uploads in Block1 blocks, reassembled before the handler sees them.
    for len in [2048, 30_000] {
        let rsp = client
            .send(Req::put(at(&server, "/big")).payload(pattern(len)))
            .unwrap();
        assert_eq!(rsp.code(), Code::CHANGED);
        assert_eq!(rsp.payload_str(), Some(format!("{len} true").as_str()));
    }
    // Both ways in one exchange.
    let body = pattern(50_000);
    let rsp = client
        .send(Req::post(at(&server, "/echo-big")).payload(body.clone()))
        .unwrap();
    assert!(rsp.payload() == &body[..]);
    assert!(client.pending().unwrap().is_empty());
    assert!(server.pending_incoming().unwrap().is_empty());
}

const COUNTER: &str = "/sensors/counter";

/// An observation (RFC 7641) of a route nested under a prefix: the registration's answer,
/// notifications rendered by the handler or given as they are, a bounded wait that loses
/// nothing, and active cancellation whose answer ends the stream.
pub fn observe_notifications_and_active_cancel<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    server.probe().set_counter(0);
    let mut obs = client.observe(&at(&server, COUNTER)).unwrap();
    let first = obs.next().unwrap().unwrap();
    assert_eq!(first.response.payload_str(), Some("0"));
    assert!(first.fresh);
    assert!(first.sequence.is_some());
    assert_eq!(server.probe().event(), AppEvent::Observers(1));
    assert_eq!(server.observer_count(COUNTER).unwrap(), 1);

    // Without a representation the route's handler renders the new state.
    server.probe().set_counter(1);
    assert_eq!(server.notify(COUNTER).unwrap(), 1);
    let next = obs.next().unwrap().unwrap();
    assert_eq!(next.response.payload_str(), Some("1"));
    assert!(next.sequence > first.sequence);

    // With one, it goes out as is.
    let sent = server.notify_with(COUNTER, Response::content("direct"));
    assert_eq!(sent.unwrap(), 1);
    let direct = obs.next().unwrap().unwrap();
    assert_eq!(direct.response.payload_str(), Some("direct"));

    // Nothing more for now: a bounded wait says so, and the observation goes on.
    let quiet = obs.next_timeout(Duration::from_millis(30));
    assert!(matches!(quiet, Some(Err(StackError::Timeout))), "{quiet:?}");
    server.probe().set_counter(2);
    assert_eq!(server.notify(COUNTER).unwrap(), 1);
    let after = obs.next().unwrap().unwrap();
    assert_eq!(after.response.payload_str(), Some("2"));

    // Active cancellation: a GET with Observe = 1; its answer is the last item.
    assert!(obs.cancel().unwrap());
    let last = obs.next().unwrap().unwrap();
    assert_eq!(last.response.code(), Code::CONTENT);
    assert_eq!(last.sequence, None);
    assert!(obs.next().is_none());
    assert_eq!(server.probe().event(), AppEvent::Observers(0));
    assert_eq!(server.observer_count(COUNTER).unwrap(), 0);
    assert!(client.pending().unwrap().is_empty());
}

/// Dropping an observation forgets it on the client; the server's next notification is
/// answered with Reset, which removes the observer (RFC 7641 §3.6).
pub fn dropping_an_observation_ends_it<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    server.probe().set_counter(7);
    let mut obs = client.observe(&at(&server, COUNTER)).unwrap();
    let first = obs.next().unwrap().unwrap();
    assert_eq!(first.response.payload_str(), Some("7"));
    assert_eq!(server.probe().event(), AppEvent::Observers(1));
    drop(obs);
    assert!(client.pending().unwrap().is_empty());
    server.notify(COUNTER).unwrap();
    assert_eq!(server.probe().event(), AppEvent::Observers(0));
    assert_eq!(server.observer_count(COUNTER).unwrap(), 0);
}

/// A plain route and an observable one whose hook declines give one answer without Observe,
/// then the end; an error notification ends the observation on both sides (RFC 7641 §4.2);
/// a notifier's path is normalised.
pub fn observing_what_cannot_be_observed<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    for path in ["/hello", "/sensors/counter?deny"] {
        let mut obs = client.observe(&at(&server, path)).unwrap();
        let only = obs.next().unwrap().unwrap();
        assert_eq!(only.response.code(), Code::CONTENT, "{path}");
        assert_eq!(only.sequence, None, "{path}");
        assert!(obs.next().is_none(), "{path}");
    }
    assert_eq!(server.observer_count(COUNTER).unwrap(), 0);
    let mut obs = client.observe(&at(&server, COUNTER)).unwrap();
    assert!(obs.next().unwrap().is_ok());
    let gone = server.notify_with("sensors/counter/", Response::new(Code::NOT_FOUND));
    assert_eq!(gone.unwrap(), 1);
    let last = obs.next().unwrap().unwrap();
    assert_eq!(last.response.code(), Code::NOT_FOUND);
    let end = obs.next().unwrap();
    assert_eq!(end.unwrap_err(), StackError::Exchange);
    assert!(obs.next().is_none());
    assert_eq!(server.observer_count(COUNTER).unwrap(), 0);
}

/// Both ends list a request under way with the same token; cancelling it by id ends its
/// waiter with `Cancelled`, and the server's late answer is reset and forgotten.
pub fn pending_lists_and_cancel_by_id<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let under_way = client.start(Req::get(at(&server, "/gate?x=1")));
    eventually("the request arrives", || {
        server.pending_incoming().unwrap().len() == 1
    });
    let incoming = server.pending_incoming().unwrap();
    assert_eq!(incoming[0].method, Code::GET);
    assert_eq!(incoming[0].uri, "/gate?x=1");
    assert_eq!(incoming[0].peer, client.local_addr());
    let outgoing = client.pending().unwrap();
    assert_eq!(outgoing.len(), 1);
    assert_eq!(outgoing[0].token, incoming[0].token);
    assert_eq!(outgoing[0].peer, server.addr());
    assert!(client.cancel(outgoing[0].id).unwrap());
    assert!(!client.cancel(outgoing[0].id).unwrap());
    assert_eq!(under_way.wait().unwrap_err(), StackError::Cancelled);
    server.probe().release();
    eventually("the server forgets the request", || {
        server.pending_incoming().unwrap().is_empty()
    });
}

/// Two thousand requests under way at once, NSTART 256, each answered with its own number.
pub fn thousands_of_concurrent_requests<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let mut config = Config::default();
    config.nstart = 256;
    let client = bind_client_with::<C>(config);
    let started: Vec<_> = (0..2000)
        .map(|i| client.start(Req::get(at(&server, &format!("/n?i={i}")))))
        .collect();
    for (i, pending) in started.into_iter().enumerate() {
        let rsp = pending.wait().unwrap();
        assert_eq!(rsp.payload_str(), Some(i.to_string().as_str()));
    }
    assert!(client.pending().unwrap().is_empty());
}

/// On the shutdown signal the server answers new requests 5.03, finishes the one under way,
/// and stops; once its handle is gone too, its port is closed.
pub fn graceful_shutdown_finishes_what_is_under_way<C: Stack, S: Stack>() {
    // A prompt empty ACK frees the client's NSTART slot for the requests that follow, and
    // makes the answer under way a Confirmable response the shutdown has to see through.
    let mut config = Config::default();
    config.empty_ack_delay = Duration::from_millis(10);
    let server = start_server_with::<S>(config);
    let client = bind_client::<C>();
    let echo = at(&server, "/echo");
    let under_way = client.start(Req::get(at(&server, "/gate")));
    eventually("the request arrives", || {
        server.pending_incoming().unwrap().len() == 1
    });
    server.stop();
    // Closing: new requests are turned away with 5.03, once the server has seen the signal.
    eventually("5.03 for new requests", || {
        let rsp = client.send(Req::get(&echo)).unwrap();
        assert!(
            [Code::CONTENT, Code::SERVICE_UNAVAILABLE].contains(&rsp.code()),
            "{rsp:?}"
        );
        rsp.code() == Code::SERVICE_UNAVAILABLE
    });
    // ... while the one under way is answered, and then the server stops.
    server.probe().release();
    assert_eq!(under_way.wait().unwrap().payload_str(), Some("released"));
    server.join().unwrap();
    assert_eq!(server.stats().unwrap_err(), StackError::ShuttingDown);
    // The handle kept the socket; without it the port refuses.
    drop(server);
    let result = client.send(Req::get(&echo).timeout(Duration::from_secs(5)));
    if cfg!(target_os = "linux") {
        assert_eq!(result.unwrap_err(), StackError::Unreachable);
    } else {
        assert!(result.is_err());
    }
}

/// A client that was shut down fails every request with `ShuttingDown`, also in a race with
/// its driver stopping; the server handle's shutdown stops the server.
pub fn shutdown_by_handles_and_ping<C: Stack, S: Stack>() {
    let server = start_server::<S>();
    let client = bind_client::<C>();
    let uri = at(&server, "/echo");
    client.ping(&uri).unwrap();
    client.shutdown().unwrap();
    let err = client.send(Req::get(&uri)).unwrap_err();
    assert_eq!(err, StackError::ShuttingDown);
    // A request sent the moment the driver stops must fail, not hang: repeat the race.
    for _ in 0..20 {
        let other = bind_client::<C>();
        other.shutdown().unwrap();
        assert_eq!(
            other.send(Req::get(&uri)).unwrap_err(),
            StackError::ShuttingDown
        );
    }
    server.shutdown().unwrap();
    server.join().unwrap();
    assert_eq!(server.stats().unwrap_err(), StackError::ShuttingDown);
}

/// A client from a server's handle sends from the server's own socket: another server sees
/// the request come from the first server's address.
pub fn server_handle_sends_from_the_server_socket<C: Stack, S: Stack>() {
    let other = start_server::<C>();
    let server = start_server::<S>();
    let from_server = server.client();
    assert_eq!(from_server.local_addr(), server.addr());
    let rsp = from_server
        .send(Req::post(at(&other, "/echo")).payload("from the server"))
        .unwrap();
    assert_eq!(rsp.payload_str(), Some("0.02 /echo from the server"));
    let rsp = from_server.send(Req::get(at(&other, "/peer"))).unwrap();
    assert_eq!(rsp.payload_str(), Some(server.addr().to_string().as_str()));
    assert!(server.stats().unwrap().datagrams_received >= 2);
}

/// A dual-stack client reaches an IPv6 server and an IPv4 one (whose address shows as IPv4)
/// and resolves `localhost`; an IPv4-only client has no address for an IPv6 host.
pub fn ipv6_and_dual_stack_clients<C: Stack, S: Stack>() {
    let server4 = start_server::<S>();
    let Ok(server6) = S::serve("[::1]:0", Config::default()) else {
        eprintln!("SKIP: no IPv6 loopback");
        return;
    };
    let Ok(dual) = C::client("[::]:0", Config::default()) else {
        eprintln!("SKIP: no dual-stack socket");
        return;
    };
    let rsp = dual.send(Req::get(at(&server6, "/echo"))).unwrap();
    assert_eq!(rsp.payload_str(), Some("0.01 /echo "));
    assert_eq!(rsp.peer, server6.addr());
    let rsp = dual.send(Req::get(at(&server4, "/echo"))).unwrap();
    assert_eq!(rsp.peer, server4.addr());
    // `localhost` resolves (to whichever family the resolver gives first).
    let port = server4.addr().port();
    let by_name = Req::get(format!("coap://localhost:{port}/echo")).timeout(Duration::from_secs(5));
    if let Ok(rsp) = dual.send(by_name) {
        assert_eq!(rsp.payload_str(), Some("0.01 /echo "));
    }
    let v4 = bind_client::<C>();
    let err = v4.send(Req::get(at(&server6, "/echo"))).unwrap_err();
    assert_eq!(err, StackError::NoUsableAddress);
}

/// URIs that cannot be sent to fail with errors that say why.
pub fn uri_errors_are_reported<C: Stack>() {
    let client = bind_client::<C>();
    let cases = [
        ("not a uri", StackError::InvalidUri),
        ("coaps://127.0.0.1/x", StackError::UnsupportedScheme),
        ("coap://host.invalid/x", StackError::Resolve),
        ("coap://[::1]:5683/x", StackError::NoUsableAddress),
    ];
    for (uri, expected) in cases {
        assert_eq!(client.send(Req::get(uri)).unwrap_err(), expected, "{uri}");
    }
    let err = client.send(Req::get("http://example.com/")).unwrap_err();
    assert!(
        matches!(err, StackError::InvalidUri | StackError::UnsupportedScheme),
        "{err:?}"
    );
}

/// A request to a closed port fails at once with `Unreachable`: the ICMP error reaches the
/// unconnected socket (IPv4, IPv4 through a dual-stack socket, IPv6).
pub fn closed_port_fails_fast_through_icmp<C: Stack>() {
    for (bind, target) in [
        ("127.0.0.1:0", "127.0.0.1"),
        ("[::]:0", "127.0.0.1"),
        ("[::]:0", "[::1]"),
    ] {
        let Ok(client) = C::client(bind, Config::default()) else {
            continue;
        };
        let Ok(probe) = UdpSocket::bind(format!("{target}:0")) else {
            continue;
        };
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let start = Instant::now();
        // Without the ICMP error this would wait for the engine's timeout, far past the
        // bound of the scenario.
        let result = client.send(Req::get(format!("coap://{target}:{port}/x")));
        if cfg!(target_os = "linux") {
            // IP_RECVERR makes the port unreachable visible on an unconnected socket.
            assert_eq!(
                result.unwrap_err(),
                StackError::Unreachable,
                "{bind} -> {target}"
            );
            assert!(start.elapsed() < Duration::from_secs(2));
        } else {
            assert!(result.is_err());
        }
        assert!(client.pending().unwrap().is_empty());
    }
}

/// A peer that never answers: the request goes out MAX_RETRANSMIT + 1 times and fails with
/// `Timeout` after MAX_TRANSMIT_WAIT; a NON request and a request with a builder timeout
/// fail with `Timeout` too.
pub fn silent_peer_times_out<C: Stack>() {
    let (addr, count) = silent_peer();
    let uri = format!("coap://{addr}/x");
    // ACK_TIMEOUT 10 ms, factor 1, 2 retransmissions: 10 + 20 + 40 ms (RFC 7252 §4.2).
    let client = bind_client_with::<C>(quick_config(Duration::from_millis(10), 2));
    let start = Instant::now();
    let err = client.send(Req::get(&uri)).unwrap_err();
    let waited = start.elapsed();
    assert_eq!(err, StackError::Timeout);
    assert!(waited >= Duration::from_millis(70), "{waited:?}");
    eventually("3 datagrams", || count.load(Ordering::SeqCst) == 3);
    assert!(client.pending().unwrap().is_empty());
    let non = Req::get(&uri).non().timeout(Duration::from_millis(20));
    assert_eq!(client.send(non).unwrap_err(), StackError::Timeout);
    eventually("4 datagrams", || count.load(Ordering::SeqCst) == 4);
    // With the RFC's transmission parameters only the builder's timeout can end this within
    // the scenario's bound.
    let patient = bind_client::<C>();
    let limited = Req::get(&uri).timeout(Duration::from_millis(30));
    assert_eq!(patient.send(limited).unwrap_err(), StackError::Timeout);
    assert!(patient.pending().unwrap().is_empty());
}

/// A peer that answers every CON with a Reset: the request fails with `Reset`.
pub fn a_reset_is_reported_as_such<C: Stack>() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = peer.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = peer.recv_from(&mut buf) {
            if n >= 4 {
                // RST (type 3), empty, the Message ID of what came (RFC 7252 §4.2).
                let rst = [0x70, 0x00, buf[2], buf[3]];
                let _ = peer.send_to(&rst, from);
            }
        }
    });
    let client = bind_client::<C>();
    let err = client
        .send(Req::get(format!("coap://{addr}/x")))
        .unwrap_err();
    assert_eq!(err, StackError::Reset);
    assert!(client.pending().unwrap().is_empty());
}

/// Requests that are cancelled by id, dropped while under way or queued behind NSTART,
/// dropped before they start, or ended by their own timeout leave nothing behind: no entry in
/// the pending list and no retransmission on the wire.
pub fn dropped_requests_leave_no_state<C: Stack>() {
    let (addr, count) = silent_peer();
    // Retransmissions would come 60 ms after each first transmission.
    let mut config = quick_config(Duration::from_millis(60), 4);
    config.nstart = 8;
    let client = bind_client_with::<C>(config);
    let mut started: Vec<_> = (0..20)
        .map(|i| client.start(Req::get(format!("coap://{addr}/r{i}"))))
        .collect();
    let listed = client.pending().unwrap();
    assert_eq!(listed.len(), 20);
    assert!(listed
        .iter()
        .all(|p| p.peer == addr && p.method == Code::GET));
    let first = listed
        .iter()
        .find(|p| p.uri.ends_with("/r0"))
        .expect("r0 is listed")
        .id;
    assert!(listed.iter().any(|p| p.uri.ends_with("/r7")));
    // Cancelled in flight by id: its waiter hears so, and a queued request takes its NSTART
    // slot.
    assert!(client.cancel(first).unwrap());
    assert_eq!(started.remove(0).wait().unwrap_err(), StackError::Cancelled);
    assert!(!client.cancel(first).unwrap());
    // Queued ones first: dropping one in flight first would free its NSTART slot for a queued
    // request, which would go out before its own cancel arrives.
    while let Some(pending) = started.pop() {
        drop(pending);
    }
    // Dropped before it ever started: never reaches the engine.
    client.drop_unsent(Req::get(format!("coap://{addr}/never")));
    // A request ended by its own timeout is cancelled too.
    let timed = Req::get(format!("coap://{addr}/t")).timeout(Duration::from_millis(30));
    assert_eq!(client.send(timed).unwrap_err(), StackError::Timeout);
    assert!(client.pending().unwrap().is_empty());
    // 8 first transmissions, 1 for the request moved up, 1 for the timed-out one.
    eventually("10 datagrams", || count.load(Ordering::SeqCst) == 10);
    // Past every first retransmission time, nothing more came.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(count.load(Ordering::SeqCst), 10);
}

/// A multicast request collects responses until its window closes, even when nobody answers.
pub fn multicast_request_collects_until_its_window_closes<C: Stack>() {
    // Bound to loopback, so the request leaves through the loopback interface only.
    let client = C::client("127.0.0.1:0", Config::default()).unwrap();
    let window = Duration::from_millis(100);
    let start = Instant::now();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let req = Req::get(format!("coap://224.0.1.187:{port}/.well-known/core")).timeout(window);
    let responses = client.multicast(req).unwrap();
    assert!(responses.is_empty(), "{responses:?}");
    assert!(start.elapsed() >= window);
    assert!(client.pending().unwrap().is_empty());
}

/// A server that joined a group answers the requests sent to it as RFC 7252 §8.2 asks:
/// Non-confirmable, from its unicast address, and not at all when the answer would be an
/// error; link-format discovery with a filter that matches nothing draws no answer either
/// (RFC 6690 §4.1). The same requests by unicast are answered, errors included.
pub fn multicast_requests_reach_group_members<C: Stack, S: Stack>() {
    let mut config = Config::default();
    config.default_leisure = Duration::from_millis(100);
    // Joined on the loopback interface, and the client bound to loopback: nothing leaves
    // the host.
    let group = coap_proto::addr::ALL_COAP_NODES_V4;
    let server = S::serve_in_group("0.0.0.0:0", config, group, Ipv4Addr::LOCALHOST).unwrap();
    let port = server.addr().port();
    let client = C::client("127.0.0.1:0", Config::default()).unwrap();
    // Answers are awaited well past the leisure, for a loaded machine; where none may come,
    // a shorter window still sees an answer that should not have been sent.
    let to_group = |path: &str, window: u64| {
        Req::get(format!("coap://{group}:{port}{path}")).timeout(Duration::from_millis(window))
    };

    let responses = client.multicast(to_group("/hello", 1500)).unwrap();
    let [Ok(rsp)] = responses.as_slice() else {
        panic!("one answer expected: {responses:?}");
    };
    assert_eq!((rsp.code(), text(rsp)), (Code::CONTENT, "hello"));
    assert_eq!(rsp.message_type(), MessageType::Non);
    assert_eq!(rsp.peer, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));

    let responses = client
        .multicast(to_group("/.well-known/core?rt=counter", 1500))
        .unwrap();
    let [Ok(rsp)] = responses.as_slice() else {
        panic!("one answer expected: {responses:?}");
    };
    assert!(text(rsp).contains("</sensors/counter>"), "{}", text(rsp));

    // Errors are suppressed for the group, and so is an empty discovery answer.
    for path in ["/nowhere", "/bad", "/.well-known/core?rt=nothing"] {
        let responses = client.multicast(to_group(path, 400)).unwrap();
        assert!(responses.is_empty(), "{path}: {responses:?}");
    }
    let unicast = format!("coap://127.0.0.1:{port}/nowhere");
    assert_eq!(
        client.send(Req::get(unicast)).unwrap().code(),
        Code::NOT_FOUND
    );
}

/// Observations relayed through a forward proxy and a reverse route (RFC 7641 §5): two
/// clients observing one target through the proxy are one observer at the origin, the
/// origin's notifications reach both, and an error notification ends every observation
/// along the way.
pub fn observing_through_a_proxy<C: Stack, S: Stack>() {
    let proxy = start_server::<S>();
    let origin = start_server::<S>();
    let target = at(&origin, COUNTER);
    origin.probe().set_counter(3);
    let (a, b) = (bind_client::<C>(), bind_client::<C>());
    let mut first = a.observe_req(via_proxy(&proxy, &target)).unwrap();
    let answer = first.next().unwrap().unwrap();
    assert_eq!(answer.response.payload_str(), Some("3"));
    assert!(answer.sequence.is_some(), "the proxy took the registration");
    let mut second = b.observe_req(via_proxy(&proxy, &target)).unwrap();
    let answer = second.next().unwrap().unwrap();
    assert_eq!(answer.response.payload_str(), Some("3"));
    assert!(answer.sequence.is_some());
    assert_eq!(
        origin.observer_count(COUNTER).unwrap(),
        1,
        "one observer: the proxy"
    );
    assert_eq!(proxy.observer_count(&target).unwrap(), 2);

    for value in [4, 5] {
        origin.probe().set_counter(value);
        assert_eq!(origin.notify(COUNTER).unwrap(), 1);
        for obs in [&mut first, &mut second] {
            let next = obs.next().unwrap().unwrap();
            assert_eq!(
                next.response.payload_str(),
                Some(value.to_string().as_str())
            );
            assert!(next.fresh);
        }
    }

    // The origin ends its observation with an error: it reaches both clients and ends
    // their observations (§4.2), and the proxy lets go of the target.
    let gone = origin.notify_with(COUNTER, Response::new(Code::NOT_FOUND));
    assert_eq!(gone.unwrap(), 1);
    for obs in [&mut first, &mut second] {
        let last = obs.next().unwrap().unwrap();
        assert_eq!(last.response.code(), Code::NOT_FOUND);
        assert!(matches!(obs.next(), None | Some(Err(_))));
    }
    assert_eq!(origin.observer_count(COUNTER).unwrap(), 0);
    eventually("the proxy's observers are gone", || {
        proxy.observer_count(&target).unwrap() == 0
    });

    // A reverse route relays too: observing /rev/sensors/counter on the proxy observes the
    // resource behind it (on the proxy server itself here), and the observers are kept
    // under the local path.
    let rev = "/rev/sensors/counter";
    proxy.probe().set_counter(8);
    let mut relayed = a.observe(&at(&proxy, rev)).unwrap();
    let answer = relayed.next().unwrap().unwrap();
    assert_eq!(answer.response.payload_str(), Some("8"));
    assert!(answer.sequence.is_some());
    assert_eq!(
        proxy.observer_count(COUNTER).unwrap(),
        1,
        "the proxy's client"
    );
    assert_eq!(proxy.observer_count(rev).unwrap(), 1);
    proxy.probe().set_counter(9);
    assert_eq!(proxy.notify(COUNTER).unwrap(), 1);
    let next = relayed.next().unwrap().unwrap();
    assert_eq!(next.response.payload_str(), Some("9"));
    assert!(next.sequence > answer.sequence);

    // What the origin does not let be observed is answered once, without Observe.
    let mut plain = a.observe(&at(&proxy, "/rev/hello")).unwrap();
    let only = plain.next().unwrap().unwrap();
    assert_eq!((text(&only.response), only.sequence), ("hello", None));
    assert!(plain.next().is_none());
}

/// A GET through the forward proxy of `proxy` for `uri` (RFC 7252 §5.7.2: the proxy's
/// address as the destination, the target in Proxy-Uri).
fn via_proxy(proxy: &impl TestServer, uri: &str) -> Req {
    Req::get(format!("coap://{}", proxy.addr()))
        .with(ReqOption::Str(OptionNumber::PROXY_URI, uri.to_string()))
}

/// Every server is a forward proxy (its `Router::proxy` route) and a reverse proxy for
/// itself under `/rev`: requests go through to the origin, cacheable answers are served
/// from the cache the second time (the origin's `/hits` count does not move), large bodies
/// cross both legs block-wise, and what a proxy cannot forward gets the RFC's code.
pub fn proxying_forward_and_reverse<C: Stack, S: Stack>() {
    let proxy = start_server::<S>();
    let origin = start_server::<S>();
    let client = bind_client::<C>();
    let hits = at(&origin, "/hits");

    let rsp = client.send(via_proxy(&proxy, &hits)).unwrap();
    assert_eq!((rsp.code(), text(&rsp)), (Code::CONTENT, "1"));
    // From the proxy's cache: the origin is not asked again (RFC 7252 §5.6).
    let rsp = client.send(via_proxy(&proxy, &hits)).unwrap();
    assert_eq!(text(&rsp), "1");
    let rsp = client.send(Req::get(hits.clone())).unwrap();
    assert_eq!(text(&rsp), "2", "the origin saw one proxied GET");

    // The reverse route maps /rev/... onto the proxy server's own resources.
    let rsp = client.send(Req::get(at(&proxy, "/rev/hits"))).unwrap();
    assert_eq!(text(&rsp), "1");
    let rsp = client.send(Req::get(at(&proxy, "/rev/hits"))).unwrap();
    assert_eq!(text(&rsp), "1", "cached");
    let rsp = client.send(Req::get(at(&proxy, "/hits"))).unwrap();
    assert_eq!(text(&rsp), "2");

    // Block-wise on both legs: the proxy sees whole bodies.
    let rsp = client
        .send(via_proxy(&proxy, &at(&origin, "/big?len=20000")))
        .unwrap();
    assert_eq!(rsp.code(), Code::CONTENT);
    assert!(rsp.payload() == &pattern(20_000)[..]);

    // A POST goes through and is not cached.
    let echo = at(&origin, "/echo");
    let post = || {
        Req::new(Code::POST, format!("coap://{}", proxy.addr()))
            .with(ReqOption::Str(OptionNumber::PROXY_URI, echo.clone()))
            .payload("ping")
    };
    for _ in 0..2 {
        assert_eq!(text(&client.send(post()).unwrap()), "0.02 /echo ping");
    }

    // Not coap: 5.05 (§5.7.2); an unrecognized Unsafe option: 4.02 (§5.7.1).
    let rsp = client
        .send(via_proxy(&proxy, "http://example.org/"))
        .unwrap();
    assert_eq!(rsp.code(), Code::PROXYING_NOT_SUPPORTED);
    let odd = via_proxy(&proxy, &hits).with(ReqOption::Opaque(OptionNumber(65002), vec![1]));
    assert_eq!(client.send(odd).unwrap().code(), Code::BAD_OPTION);
}
