//! Blocking client and thread-pool server over real loopback sockets (127.0.0.1).
//!
//! Every test runs its body on a thread of its own and fails if that takes longer than
//! [`LIMIT`]. Tests of timers use short transmission parameters (`ack_timeout` of tens of
//! milliseconds) instead of waiting for the RFC defaults.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use coap_blocking::{
    Client, CoapError, Code, Config, ContentFormat, Error, IncomingRequest, MessageType,
    ObserveHooks, OptionNumber, ResourceAttributes, Response, Router, Server, ServerHandle,
};

/// The bound for a whole test.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `body` on a thread and fails the test if it panics or outlives [`LIMIT`].
fn bounded(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(()) => worker.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: report its panic.
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test took longer than {LIMIT:?}"),
    }
}

fn serve(app: Router) -> (SocketAddr, ServerHandle, JoinHandle<Result<(), Error>>) {
    serve_with(Server::builder(), app)
}

fn serve_with(
    builder: coap_blocking::ServerBuilder,
    app: Router,
) -> (SocketAddr, ServerHandle, JoinHandle<Result<(), Error>>) {
    let server = builder.bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let thread = thread::spawn(move || server.serve(app));
    (addr, handle, thread)
}

/// Short transmission parameters, so timeouts take milliseconds.
fn fast_config() -> Config {
    let mut config = Config::default();
    config.ack_timeout = Duration::from_millis(40);
    config.max_retransmit = 2;
    config
}

fn echo(req: IncomingRequest) -> Response {
    Response::content(format!(
        "{} {} {}",
        req.method(),
        req.path_string(),
        req.payload_str().unwrap_or("<binary>")
    ))
}

fn echo_app() -> Router {
    Router::new()
        .get("/echo", echo)
        .post("/echo", echo)
        .put("/echo", echo)
        .delete("/echo", echo)
        .fetch("/echo", echo)
        .patch("/echo", echo)
        .ipatch("/echo", echo)
        .route("/echo", Code::new(0, 20), echo)
}

/// A UDP socket that never answers and counts what it receives.
fn silent_peer() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while socket.recv_from(&mut buf).is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

#[test]
fn every_method_reaches_its_handler() {
    bounded(|| {
        let (addr, _h, _t) = serve(echo_app());
        let client = Client::bind("127.0.0.1:0").unwrap();
        let uri = format!("coap://{addr}/echo");
        let cases = [
            (client.get(&uri), "0.01 /echo "),
            (client.post(&uri).payload("p"), "0.02 /echo p"),
            (client.put(&uri).payload("u"), "0.03 /echo u"),
            (client.delete(&uri), "0.04 /echo "),
            (client.fetch(&uri).payload("f"), "0.05 /echo f"),
            (client.patch(&uri).payload("pa"), "0.06 /echo pa"),
            (client.ipatch(&uri).payload("ip"), "0.07 /echo ip"),
            (client.custom(Code::new(0, 20), &uri), "0.20 /echo "),
        ];
        for (request, expected) in cases {
            let rsp = request.send().unwrap();
            assert_eq!(rsp.code(), Code::CONTENT);
            assert_eq!(rsp.payload_str(), Some(expected));
            assert_eq!(rsp.peer(), addr);
            assert_eq!(rsp.uri().to_string(), uri);
        }
        let err = client.request(Code::CONTENT, &uri).send().unwrap_err();
        assert!(matches!(err, Error::NotARequest(_)), "{err:?}");
        // A NON request gets a NON response (RFC 7252 §5.2.3).
        let rsp = client.get(&uri).non().send().unwrap();
        assert_eq!(rsp.message_type(), MessageType::Non);
        assert_eq!(rsp.payload_str(), Some("0.01 /echo "));
        assert!(client.ping(&uri).is_ok());
    });
}

#[test]
fn request_builder_options_arrive() {
    bounded(|| {
        let app = Router::new().post("/opts", |req: IncomingRequest| {
            let o = req.options();
            Response::content(format!(
                "cf={:?} accept={:?} etags={} inm={} q={:?} s={:?} u={:?}",
                o.content_format().map(|c| c.0),
                o.accept().map(|c| c.0),
                o.etags().count(),
                o.if_none_match(),
                req.query().collect::<Vec<_>>(),
                o.get_str(OptionNumber(65000)),
                o.get_uint(OptionNumber(65004)),
            ))
        });
        let (addr, _h, _t) = serve(app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let rsp = client
            .post(format!("coap://{addr}/opts?a=1"))
            .payload("{}")
            .content_format(ContentFormat::JSON)
            .accept(ContentFormat::CBOR)
            .etag([1, 2])
            .etag([3])
            .if_none_match()
            .query("b=2")
            .option_str(OptionNumber(65000), "str")
            .option_uint(OptionNumber(65004), 300)
            .send()
            .unwrap();
        assert_eq!(
            rsp.payload_str().unwrap(),
            "cf=Some(50) accept=Some(60) etags=2 inm=true q=[\"a=1\", \"b=2\"] \
             s=Some(\"str\") u=Some(300)"
        );
    });
}

#[test]
fn unknown_paths_methods_and_handler_errors() {
    bounded(|| {
        let app = echo_app()
            .get("/bad", |_req: IncomingRequest| {
                Err::<Response, _>(CoapError::bad_request("missing ?id"))
            })
            .get("/panic", |_req: IncomingRequest| -> Response {
                panic!("handler bug (expected by the test)")
            });
        let (addr, handle, _t) = serve(app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let code = |path: &str, method: Code| {
            client
                .request(method, format!("coap://{addr}{path}"))
                .send()
                .unwrap()
        };
        assert_eq!(code("/missing", Code::GET).code(), Code::NOT_FOUND);
        assert_eq!(code("/bad", Code::PUT).code(), Code::METHOD_NOT_ALLOWED);
        let bad = code("/bad", Code::GET);
        assert_eq!(bad.code(), Code::BAD_REQUEST);
        assert_eq!(bad.payload_str(), Some("missing ?id"));
        for _ in 0..2 {
            assert_eq!(
                code("/panic", Code::GET).code(),
                Code::INTERNAL_SERVER_ERROR
            );
        }
        assert!(handle.pending_incoming().unwrap().is_empty());
        // A plain client answers requests 4.04.
        let other = Client::bind("127.0.0.1:0").unwrap();
        let rsp = client
            .get(format!("coap://{}/x", other.local_addr()))
            .send()
            .unwrap();
        assert_eq!(rsp.code(), Code::NOT_FOUND);
    });
}

#[test]
fn slow_handlers_get_separate_responses() {
    bounded(|| {
        let app = Router::new().get("/slow", |_req: IncomingRequest| {
            // Longer than the 100 ms empty-ACK delay: the engine acknowledges first.
            thread::sleep(Duration::from_millis(300));
            Response::content("done")
        });
        let (addr, _h, _t) = serve(app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let rsp = client.get(format!("coap://{addr}/slow")).send().unwrap();
        assert_eq!(rsp.payload_str(), Some("done"));
        assert_eq!(rsp.message_type(), MessageType::Con);
        assert_eq!(client.stats().unwrap().retransmissions, 0);
        let rsp = client
            .get(format!("coap://{addr}/slow"))
            .non()
            .send()
            .unwrap();
        assert_eq!(rsp.message_type(), MessageType::Non);
    });
}

#[test]
fn deferred_responses_through_a_responder() {
    bounded(|| {
        let (park, parked) = mpsc::channel();
        let park = std::sync::Mutex::new(park);
        let app = Router::new()
            .get("/later", move |req: IncomingRequest| {
                let (responder, deferred) = req.defer();
                park.lock().unwrap().send(responder).unwrap();
                deferred
            })
            .get("/dropped", |req: IncomingRequest| {
                let (responder, deferred) = req.defer();
                drop(responder);
                deferred
            });
        let (addr, handle, _t) = serve(app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let pending = client.get(format!("coap://{addr}/later")).start().unwrap();
        let responder: coap_blocking::Responder =
            parked.recv_timeout(Duration::from_secs(10)).unwrap();
        let listed = handle.pending_incoming().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].uri, "/later");
        assert_eq!(listed[0].id, responder.id());
        // Answered from another thread, after the empty ACK.
        let answering = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            responder.send(Response::content("at last"))
        });
        let rsp = pending.wait().unwrap();
        answering.join().unwrap().unwrap();
        assert_eq!(rsp.payload_str(), Some("at last"));
        assert_eq!(rsp.message_type(), MessageType::Con);
        assert!(handle.pending_incoming().unwrap().is_empty());
        // A responder dropped without answering answers 5.00.
        let rsp = client.get(format!("coap://{addr}/dropped")).send().unwrap();
        assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR);
    });
}

#[test]
fn well_known_core_lists_routes_with_filtering() {
    bounded(|| {
        let app = Router::new()
            .get("/temp", |_r: IncomingRequest| Response::content("21"))
            .attributes(
                "/temp",
                ResourceAttributes::new().rt("temperature").ct(0u16),
            )
            .get("/light", |_r: IncomingRequest| Response::content("on"))
            .attributes("/light", ResourceAttributes::new().rt("light"));
        let (addr, _h, _t) = serve(app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let all = client
            .get(format!("coap://{addr}/.well-known/core"))
            .send()
            .unwrap();
        assert_eq!(all.content_format(), Some(ContentFormat::LINK_FORMAT));
        let text = all.payload_str().unwrap();
        assert!(
            text.contains("</temp>") && text.contains("</light>"),
            "{text}"
        );
        let one = client
            .get(format!("coap://{addr}/.well-known/core?rt=temperature"))
            .send()
            .unwrap();
        assert_eq!(one.payload_str(), Some("</temp>;rt=\"temperature\";ct=0"));
    });
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_bodies_both_ways() {
    bounded(|| {
        let app = Router::new()
            .get("/big", |req: IncomingRequest| {
                let len = req
                    .query_value("len")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Response::content(pattern(len))
            })
            .put("/big", |req: IncomingRequest| {
                let ok = req.payload()[..] == pattern(req.payload().len())[..];
                Response::new(Code::CHANGED).with_payload(format!("{} {ok}", req.payload().len()))
            })
            .post("/echo-big", |req: IncomingRequest| {
                Response::content(req.payload().clone())
            });
        let (addr, handle, _t) = serve(app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        // Block2 downloads (RFC 7959), reassembled by the engine.
        for len in [1024, 1025, 100_000] {
            let rsp = client
                .get(format!("coap://{addr}/big?len={len}"))
                .send()
                .unwrap();
            assert_eq!(rsp.code(), Code::CONTENT);
            assert!(rsp.payload()[..] == pattern(len)[..], "{len}");
        }
        // Block1 uploads, reassembled before the handler runs.
        for len in [2048, 30_000] {
            let rsp = client
                .put(format!("coap://{addr}/big"))
                .payload(pattern(len))
                .send()
                .unwrap();
            assert_eq!(rsp.code(), Code::CHANGED);
            assert_eq!(rsp.payload_str(), Some(format!("{len} true").as_str()));
        }
        let body = pattern(50_000);
        let rsp = client
            .post(format!("coap://{addr}/echo-big"))
            .payload(body.clone())
            .send()
            .unwrap();
        assert!(rsp.payload()[..] == body[..]);
        assert!(client.pending_requests().unwrap().is_empty());
        assert!(handle.pending_incoming().unwrap().is_empty());
    });
}

/// An observable counter whose observer count is reported on a channel.
fn counter_app(value: Arc<AtomicUsize>, counts: mpsc::Sender<usize>) -> Router {
    let counts = std::sync::Mutex::new(counts);
    let hooks = ObserveHooks::new()
        .accept(|req: &IncomingRequest| req.query_value("deny").is_none())
        .on_observer_count(move |n| {
            let _ = counts.lock().unwrap().send(n);
        });
    Router::new()
        .observable_with(
            "/counter",
            move |_req: IncomingRequest| {
                Response::content(value.load(Ordering::SeqCst).to_string())
            },
            hooks,
        )
        .get("/plain", |_req: IncomingRequest| Response::content("plain"))
}

#[test]
fn observe_notifications_and_active_cancel() {
    bounded(|| {
        let value = Arc::new(AtomicUsize::new(0));
        let (counts_tx, counts) = mpsc::channel();
        let (addr, handle, _t) = serve(counter_app(Arc::clone(&value), counts_tx));
        let notifier = handle.notifier("/counter");
        let client = Client::bind("127.0.0.1:0").unwrap();
        let mut obs = client.observe(format!("coap://{addr}/counter")).unwrap();
        let first = obs.next().unwrap().unwrap();
        assert_eq!(first.payload_str(), Some("0"));
        assert!(first.is_fresh());
        assert!(first.sequence().is_some());
        assert_eq!(counts.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
        assert_eq!(notifier.observer_count().unwrap(), 1);

        // Notified from another thread; the handler renders the new state.
        value.store(1, Ordering::SeqCst);
        let n = thread::scope(|s| s.spawn(|| notifier.notify().unwrap()).join().unwrap());
        assert_eq!(n, 1);
        let next = obs.next().unwrap().unwrap();
        assert_eq!(next.payload_str(), Some("1"));
        assert!(next.sequence() > first.sequence());

        assert_eq!(
            notifier.notify_with(Response::content("direct")).unwrap(),
            1
        );
        assert_eq!(obs.next().unwrap().unwrap().payload_str(), Some("direct"));
        // Nothing more for now: a bounded wait says so and the observation goes on.
        assert!(matches!(
            obs.next_timeout(Duration::from_millis(50)),
            Some(Err(Error::Timeout))
        ));

        // Active cancellation (RFC 7641 §3.6): the answer is the last item.
        assert!(obs.cancel().unwrap());
        let last = obs.next().unwrap().unwrap();
        assert_eq!(last.code(), Code::CONTENT);
        assert_eq!(last.sequence(), None);
        assert!(obs.next().is_none());
        assert_eq!(counts.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
        assert_eq!(notifier.observer_count().unwrap(), 0);
        assert!(client.pending_requests().unwrap().is_empty());
    });
}

#[test]
fn dropping_an_observation_ends_it() {
    bounded(|| {
        let (counts_tx, counts) = mpsc::channel();
        let (addr, handle, _t) = serve(counter_app(Arc::new(AtomicUsize::new(7)), counts_tx));
        let notifier = handle.notifier("/counter");
        let client = Client::bind("127.0.0.1:0").unwrap();
        let mut obs = client.observe(format!("coap://{addr}/counter")).unwrap();
        assert_eq!(obs.next().unwrap().unwrap().payload_str(), Some("7"));
        assert_eq!(counts.recv_timeout(Duration::from_secs(10)).unwrap(), 1);
        drop(obs);
        assert!(client.pending_requests().unwrap().is_empty());
        // The next notification is answered with Reset, which removes the observer.
        notifier.notify().unwrap();
        assert_eq!(counts.recv_timeout(Duration::from_secs(10)).unwrap(), 0);
        assert_eq!(notifier.observer_count().unwrap(), 0);
    });
}

#[test]
fn observing_what_cannot_be_observed() {
    bounded(|| {
        let (counts_tx, _counts) = mpsc::channel();
        let (addr, handle, _t) = serve(counter_app(Arc::new(AtomicUsize::new(3)), counts_tx));
        let client = Client::bind("127.0.0.1:0").unwrap();
        for path in ["/plain", "/counter?deny"] {
            let mut obs = client.observe(format!("coap://{addr}{path}")).unwrap();
            let only = obs.next().unwrap().unwrap();
            assert_eq!(only.code(), Code::CONTENT, "{path}");
            assert_eq!(only.sequence(), None, "{path}");
            assert!(obs.next().is_none(), "{path}");
        }
        // An error notification ends the observation on both sides (RFC 7641 §4.2).
        let mut obs = client.observe(format!("coap://{addr}/counter")).unwrap();
        assert!(obs.next().unwrap().is_ok());
        let notifier = handle.notifier("counter/");
        notifier
            .notify_with(Response::new(Code::NOT_FOUND))
            .unwrap();
        assert_eq!(obs.next().unwrap().unwrap().code(), Code::NOT_FOUND);
        assert!(matches!(obs.next(), Some(Err(Error::Exchange(_)))));
        assert!(obs.next().is_none());
        assert_eq!(notifier.observer_count().unwrap(), 0);
    });
}

#[test]
fn closed_port_fails_promptly() {
    bounded(|| {
        let client = Client::builder()
            .config(fast_config())
            .bind("127.0.0.1:0")
            .unwrap();
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let start = Instant::now();
        let result = client.get(format!("coap://127.0.0.1:{port}/x")).send();
        if cfg!(target_os = "linux") {
            // IP_RECVERR shows the ICMP port unreachable to an unconnected socket.
            assert!(matches!(result, Err(Error::Unreachable)), "{result:?}");
            assert!(start.elapsed() < Duration::from_secs(2));
        } else {
            assert!(result.is_err());
        }
        assert!(client.pending_requests().unwrap().is_empty());
    });
}

#[test]
fn silent_peers_time_out_with_an_error_naming_it() {
    bounded(|| {
        let (addr, count) = silent_peer();
        let client = Client::builder()
            .config(fast_config())
            .bind("127.0.0.1:0")
            .unwrap();
        // The engine gives up after MAX_RETRANSMIT = 2 retransmissions, when the last wait
        // ends: 40 ms x (1 + 2 + 4) x a random factor in [1, 1.5] (RFC 7252 §4.2). The I/O
        // thread sleeps until each deadline exactly, so the failure comes within that window.
        let start = Instant::now();
        let err = client.get(format!("coap://{addr}/x")).send().unwrap_err();
        let waited = start.elapsed();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert!(
            waited >= Duration::from_millis(280) && waited < Duration::from_millis(420 + 200),
            "{waited:?}"
        );
        assert_eq!(err.to_string(), "no answer before the timeout");
        assert_eq!(count.load(Ordering::SeqCst), 3);
        // The builder's own timeout, shorter than the engine's.
        let start = Instant::now();
        let err = client
            .get(format!("coap://{addr}/y"))
            .timeout(Duration::from_millis(30))
            .send()
            .unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(client.pending_requests().unwrap().is_empty());
    });
}

#[test]
fn a_reset_is_reported_as_such() {
    bounded(|| {
        // A peer that answers every CON with a Reset of the same Message ID (RFC 7252 §4.2).
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = peer.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = peer.recv_from(&mut buf) {
                if n >= 4 {
                    let rst = [0x70, 0x00, buf[2], buf[3]];
                    let _ = peer.send_to(&rst, from);
                }
            }
        });
        let client = Client::bind("127.0.0.1:0").unwrap();
        let err = client.get(format!("coap://{addr}/x")).send().unwrap_err();
        assert!(matches!(err, Error::Reset), "{err:?}");
    });
}

#[test]
fn dropping_or_cancelling_leaves_no_state() {
    bounded(|| {
        let (addr, count) = silent_peer();
        let mut config = Config::default();
        // Retransmissions 200-300 ms and 600-900 ms after each first transmission.
        config.ack_timeout = Duration::from_millis(200);
        config.nstart = 4;
        let client = Client::builder()
            .config(config)
            .bind("127.0.0.1:0")
            .unwrap();
        let mut handles: Vec<_> = (0..10)
            .map(|i| client.get(format!("coap://{addr}/r{i}")).start().unwrap())
            .collect();
        let listed = client.pending_requests().unwrap();
        assert_eq!(listed.len(), 10);
        assert!(listed
            .iter()
            .all(|p| p.peer == addr && p.method == Code::GET));
        assert!(listed.iter().any(|p| p.uri.ends_with("/r7")));
        // Cancel one in flight by id: its waiter hears Cancelled, and a queued request takes
        // its NSTART slot.
        let mut first = handles.remove(0);
        assert!(client.cancel(first.id()).unwrap());
        let outcome = first.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(outcome, Err(Error::Cancelled)), "{outcome:?}");
        assert!(!client.cancel(first.id()).unwrap(), "already ended");
        // Drop the rest, queued ones first (so no queued request takes a freed slot).
        while let Some(h) = handles.pop() {
            drop(h);
        }
        assert!(client.pending_requests().unwrap().is_empty());
        // Let the peer count what was sent, then check nothing more comes.
        thread::sleep(Duration::from_millis(50));
        let sent = count.load(Ordering::SeqCst);
        assert_eq!(
            sent, 5,
            "4 first transmissions, then 1 for the request moved up"
        );
        thread::sleep(Duration::from_millis(700));
        assert_eq!(count.load(Ordering::SeqCst), sent);
    });
}

#[test]
fn many_concurrent_requests_and_callbacks() {
    bounded(|| {
        let app = Router::new().get("/n", |req: IncomingRequest| {
            Response::content(req.query_value("i").unwrap_or("").to_owned())
        });
        let (addr, _h, _t) = serve_with(Server::builder().workers(4), app);
        let mut config = Config::default();
        config.nstart = 64;
        let client = Client::builder()
            .config(config)
            .bind("127.0.0.1:0")
            .unwrap();
        let handles: Vec<_> = (0..1000)
            .map(|i| {
                client
                    .get(format!("coap://{addr}/n?i={i}"))
                    .start()
                    .unwrap()
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let rsp = h.wait().unwrap();
            assert_eq!(rsp.payload_str(), Some(i.to_string().as_str()));
        }
        // The callback variant, from several threads at once.
        let (tx, rx) = mpsc::channel();
        thread::scope(|s| {
            for t in 0..4 {
                let client = client.clone();
                let tx = tx.clone();
                s.spawn(move || {
                    for i in 0..100 {
                        let tx = tx.clone();
                        let id = client
                            .get(format!("coap://{addr}/n?i={}", t * 100 + i))
                            .send_with(move |outcome| {
                                let _ = tx.send(outcome.map(|r| r.payload().len()));
                            })
                            .unwrap();
                        let _ = id;
                    }
                });
            }
        });
        for _ in 0..400 {
            assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap().is_ok());
        }
        assert!(client.pending_requests().unwrap().is_empty());
    });
}

#[test]
fn a_full_pool_answers_5_03() {
    bounded(|| {
        let (release, wait) = mpsc::channel::<()>();
        let wait = std::sync::Mutex::new(wait);
        let (entered_tx, entered) = mpsc::channel();
        let entered_tx = std::sync::Mutex::new(entered_tx);
        let app = Router::new().get("/block", move |_req: IncomingRequest| {
            entered_tx.lock().unwrap().send(()).unwrap();
            let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(20));
            Response::content("released")
        });
        // One worker and room for one waiting request.
        let (addr, handle, _t) = serve_with(Server::builder().workers(1).queue_capacity(1), app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let busy = client.get(format!("coap://{addr}/block")).start().unwrap();
        entered.recv_timeout(Duration::from_secs(10)).unwrap();
        let queued = client.get(format!("coap://{addr}/block")).start().unwrap();
        while handle.pending_incoming().unwrap().len() < 2 {
            thread::sleep(Duration::from_millis(5));
        }
        let rsp = client.get(format!("coap://{addr}/block")).send().unwrap();
        assert_eq!(rsp.code(), Code::SERVICE_UNAVAILABLE);
        assert!(rsp.options().max_age().is_some());
        release.send(()).unwrap();
        release.send(()).unwrap();
        assert_eq!(busy.wait().unwrap().payload_str(), Some("released"));
        assert_eq!(queued.wait().unwrap().payload_str(), Some("released"));
    });
}

#[test]
fn graceful_shutdown_finishes_what_is_under_way() {
    bounded(|| {
        let app = Router::new().get("/slow", |_req: IncomingRequest| {
            thread::sleep(Duration::from_millis(300));
            Response::content("finished")
        });
        let (addr, handle, server) = serve(app);
        let client = Client::bind("127.0.0.1:0").unwrap();
        let under_way = client.get(format!("coap://{addr}/slow")).start().unwrap();
        // Give the request time to reach the server before shutting down.
        while handle.pending_incoming().unwrap().is_empty() {
            thread::sleep(Duration::from_millis(5));
        }
        handle.shutdown().unwrap();
        assert_eq!(under_way.wait().unwrap().payload_str(), Some("finished"));
        server.join().unwrap().unwrap();
        assert!(matches!(handle.stats(), Err(Error::ShuttingDown)));
        // The client stops too; afterwards requests fail at once.
        client.shutdown().unwrap();
        let err = client
            .get(format!("coap://{addr}/slow"))
            .send()
            .unwrap_err();
        assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    });
}

#[test]
fn serve_with_shutdown_stops_on_the_signal() {
    bounded(|| {
        let server = Server::bind("127.0.0.1:0").unwrap();
        let (stop, signal) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            server.serve_with_shutdown(Router::new(), move || {
                let _ = signal.recv();
            })
        });
        stop.send(()).unwrap();
        thread.join().unwrap().unwrap();
    });
}

#[test]
fn uri_errors_and_server_handle_client() {
    bounded(|| {
        let (addr, handle, _t) = serve(echo_app());
        let client = handle.client();
        assert!(matches!(
            client.get("http://example.com/").send(),
            Err(Error::InvalidUri(_) | Error::UnsupportedScheme(_))
        ));
        assert!(matches!(
            client.get("coaps://127.0.0.1/").send(),
            Err(Error::UnsupportedScheme(_))
        ));
        // From the server's own socket.
        let other = serve(echo_app());
        let rsp = client
            .get(format!("coap://{}/echo", other.0))
            .send()
            .unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(client.local_addr(), addr);
    });
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Client>();
    send_sync::<ServerHandle>();
    send_sync::<coap_blocking::Notifier>();
    send_sync::<Error>();
    send::<coap_blocking::Responder>();
    send::<coap_blocking::ResponseHandle>();
    send::<coap_blocking::Observation>();
    send::<coap_blocking::RequestBuilder>();
}
