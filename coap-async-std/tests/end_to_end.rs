//! Client and server over real loopback sockets, each scenario run twice: under async-std's
//! runtime and under smol's.
//!
//! Every scenario is bounded by [`LIMIT`] of wall-clock time. There is no paused clock on
//! this reactor, so scenarios that need the engine's timers shorten them through [`Config`]
//! rather than wait for the RFC defaults.

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::Receiver;
use async_io::{Async, Timer};
use coap_async_std::{
    Client, CoapError, Code, Config, ContentFormat, Error, IncomingRequest, MessageType,
    ObserveHooks, OptionNumber, ResourceAttributes, Response, Router, Server, ServerHandle,
};
use futures_lite::future;

/// The bound of a whole scenario.
const LIMIT: Duration = Duration::from_secs(60);

/// A boxed task for a runtime's spawner.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The runtime a scenario runs under: how to spawn a task on it.
#[derive(Clone, Copy)]
struct Rt {
    spawn: fn(Task),
}

const ASYNC_STD: Rt = Rt {
    spawn: |task| {
        async_std::task::spawn(task);
    },
};

const SMOL: Rt = Rt {
    spawn: |task| smol::spawn(task).detach(),
};

impl Rt {
    /// Spawns `f`; its output arrives on the returned channel.
    fn spawn<T: Send + 'static>(self, f: impl Future<Output = T> + Send + 'static) -> Receiver<T> {
        let (tx, rx) = async_channel::bounded(1);
        (self.spawn)(Box::pin(async move {
            let _ = tx.send(f.await).await;
        }));
        rx
    }
}

async fn bounded<F: Future>(f: F) -> F::Output {
    future::or(f, async {
        Timer::after(LIMIT).await;
        panic!("scenario took longer than {LIMIT:?}");
    })
    .await
}

async fn sleep(d: Duration) {
    Timer::after(d).await;
}

/// Waits until `check` holds, looking every 10 ms, for at most 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(5), "never: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

async fn serve(rt: Rt, app: Router) -> (SocketAddr, ServerHandle, Receiver<Result<(), Error>>) {
    serve_with(rt, Config::default(), app).await
}

async fn serve_with(
    rt: Rt,
    config: Config,
    app: Router,
) -> (SocketAddr, ServerHandle, Receiver<Result<(), Error>>) {
    let server = Server::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let done = rt.spawn(server.serve(app));
    (addr, handle, done)
}

async fn client() -> Client {
    Client::bind("127.0.0.1:0").await.unwrap()
}

fn echo_app() -> Router {
    let echo = |req: IncomingRequest| async move {
        let body = req.payload_str().unwrap_or("<binary>").to_owned();
        Response::content(format!("{} {} {body}", req.method(), req.path_string()))
    };
    Router::new()
        .get("/echo", echo)
        .post("/echo", echo)
        .put("/echo", echo)
        .delete("/echo", echo)
        .fetch("/echo", echo)
        .patch("/echo", echo)
        .ipatch("/echo", echo)
        .route("/echo", Code::new(0, 25), echo)
}

async fn every_method_reaches_its_handler(rt: Rt) {
    let (addr, _h, _t) = serve(rt, echo_app()).await;
    let client = client().await;
    let uri = format!("coap://{addr}/echo");
    let cases = [
        (client.get(&uri), "0.01 /echo "),
        (client.post(&uri).payload("a"), "0.02 /echo a"),
        (client.put(&uri).payload("b"), "0.03 /echo b"),
        (client.delete(&uri), "0.04 /echo "),
        (client.fetch(&uri).payload("c"), "0.05 /echo c"),
        (client.patch(&uri).payload("d"), "0.06 /echo d"),
        (client.ipatch(&uri).payload("e"), "0.07 /echo e"),
        (client.request(Code::new(0, 25), &uri), "0.25 /echo "),
    ];
    for (request, expected) in cases {
        let rsp = request.await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.payload_str(), Some(expected));
        assert_eq!(rsp.peer(), addr);
        assert_eq!(rsp.uri().to_string(), uri);
        // Answered at once, so piggybacked on the ACK.
        assert_eq!(rsp.message_type(), MessageType::Ack);
    }
    let err = client.request(Code::CHANGED, &uri).await.unwrap_err();
    assert!(matches!(err, Error::NotARequest(_)), "{err:?}");
}

async fn request_options_and_non(rt: Rt) {
    let app = Router::new().post("/opts", |req: IncomingRequest| async move {
        let o = req.options();
        Response::content(format!(
            "cf={:?} accept={:?} etags={} inm={} q={:?} s={:?} u={:?} t={}",
            o.content_format().map(|c| c.0),
            o.accept().map(|c| c.0),
            o.etags().count(),
            o.if_none_match(),
            req.query().collect::<Vec<_>>(),
            o.get_str(OptionNumber(65000)),
            o.get_uint(OptionNumber(65004)),
            req.message_type(),
        ))
    });
    let (addr, _h, _t) = serve(rt, app).await;
    let rsp = client()
        .await
        .post(format!("coap://{addr}/opts?a=1"))
        .payload("{}")
        .content_format(ContentFormat::JSON)
        .accept(ContentFormat::CBOR)
        .etag([1, 2])
        .etag([3])
        .if_none_match()
        .query("b=2")
        .option_str(OptionNumber(65000), "s")
        .option_uint(OptionNumber(65004), 300)
        .non()
        .timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        rsp.payload_str(),
        Some(
            "cf=Some(50) accept=Some(60) etags=2 inm=true q=[\"a=1\", \"b=2\"] \
             s=Some(\"s\") u=Some(300) t=NON"
        )
    );
    // A NON request is answered NON (RFC 7252 §5.2.3).
    assert_eq!(rsp.message_type(), MessageType::Non);
}

async fn not_found_and_method_not_allowed(rt: Rt) {
    let app = Router::new().get("/only-get", |_r: IncomingRequest| async {
        Response::content("x")
    });
    let (addr, _h, _t) = serve(rt, app).await;
    let client = client().await;
    let rsp = client.get(format!("coap://{addr}/missing")).await.unwrap();
    assert_eq!(rsp.code(), Code::NOT_FOUND);
    let rsp = client.put(format!("coap://{addr}/only-get")).await.unwrap();
    assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
    // A plain client answers what it is sent with 4.04.
    let other = Client::bind("127.0.0.1:0").await.unwrap();
    let rsp = client
        .get(format!("coap://{}/x", other.local_addr()))
        .await
        .unwrap();
    assert_eq!(rsp.code(), Code::NOT_FOUND);
}

async fn handler_errors_and_panics(rt: Rt) {
    let app = Router::new()
        .put("/cf", |req: IncomingRequest| async move {
            if req.content_format() != Some(ContentFormat::JSON) {
                return Err(CoapError::unsupported_content_format());
            }
            Ok(Response::new(Code::CHANGED))
        })
        .get("/bad", |_req: IncomingRequest| async {
            Err::<Response, _>(CoapError::bad_request("missing ?id"))
        })
        .get("/now", |_req: IncomingRequest| async {
            if true {
                panic!("handler bug");
            }
            Response::content("unreachable")
        })
        .get("/later", |_req: IncomingRequest| async {
            future::yield_now().await;
            if true {
                panic!("handler bug after a wait");
            }
            Response::content("unreachable")
        });
    let (addr, handle, _t) = serve(rt, app).await;
    let client = client().await;
    let rsp = client.put(format!("coap://{addr}/cf")).await.unwrap();
    assert_eq!(rsp.code(), Code::UNSUPPORTED_CONTENT_FORMAT);
    let rsp = client
        .put(format!("coap://{addr}/cf"))
        .content_format(ContentFormat::JSON)
        .await
        .unwrap();
    assert_eq!(rsp.code(), Code::CHANGED);
    let rsp = client.get(format!("coap://{addr}/bad")).await.unwrap();
    assert_eq!(rsp.code(), Code::BAD_REQUEST);
    assert_eq!(rsp.payload_str(), Some("missing ?id"));
    for path in ["now", "later", "now", "later"] {
        let rsp = client.get(format!("coap://{addr}/{path}")).await.unwrap();
        assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR, "{path}");
    }
    // The server survived both kinds of panic and keeps nothing for them.
    assert!(handle.pending_incoming().await.unwrap().is_empty());
}

async fn slow_handlers_get_separate_responses(rt: Rt) {
    let app = Router::new().get("/slow", |_req: IncomingRequest| async {
        // Longer than the 100 ms after which the engine sends the empty ACK, shorter than
        // the client's first retransmission (ACK_TIMEOUT, 2 s at least).
        sleep(Duration::from_millis(400)).await;
        Response::content("done")
    });
    let (addr, _h, _t) = serve(rt, app).await;
    let client = client().await;
    let start = Instant::now();
    let rsp = client.get(format!("coap://{addr}/slow")).await.unwrap();
    assert_eq!(rsp.payload_str(), Some("done"));
    // A separate response comes in a Confirmable message of its own (RFC 7252 §5.2.2).
    assert_eq!(rsp.message_type(), MessageType::Con);
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(client.stats().await.unwrap().retransmissions, 0);
    let rsp = client
        .get(format!("coap://{addr}/slow"))
        .non()
        .await
        .unwrap();
    assert_eq!(rsp.message_type(), MessageType::Non);
}

async fn deferred_responses_through_a_responder(rt: Rt) {
    let app = Router::new()
        .get("/deferred", move |req: IncomingRequest| async move {
            let (responder, deferred) = req.defer();
            rt.spawn(async move {
                sleep(Duration::from_millis(200)).await;
                responder.send(Response::content("later")).await.unwrap();
            });
            deferred
        })
        .get("/dropped", |req: IncomingRequest| async move {
            let (responder, deferred) = req.defer();
            drop(responder);
            deferred
        })
        .get("/twice", move |req: IncomingRequest| async move {
            let (responder, _deferred) = req.defer();
            rt.spawn(async move {
                sleep(Duration::from_millis(50)).await;
                let again = responder.send(Response::content("second")).await;
                assert!(matches!(again, Err(Error::AlreadyAnswered)), "{again:?}");
            });
            Response::content("first")
        });
    let (addr, handle, _t) = serve(rt, app).await;
    let client = client().await;
    let rsp = client.get(format!("coap://{addr}/deferred")).await.unwrap();
    assert_eq!(rsp.payload_str(), Some("later"));
    assert_eq!(rsp.message_type(), MessageType::Con);
    let rsp = client.get(format!("coap://{addr}/dropped")).await.unwrap();
    assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR);
    let rsp = client.get(format!("coap://{addr}/twice")).await.unwrap();
    assert_eq!(rsp.payload_str(), Some("first"));
    assert!(handle.pending_incoming().await.unwrap().is_empty());
}

async fn well_known_core_filtering(rt: Rt) {
    let ok = |_req: IncomingRequest| async { Response::content("x") };
    let sensors = Router::new()
        .get("/temp", ok)
        .attributes(
            "/temp",
            ResourceAttributes::new()
                .rt("temperature-c")
                .interface("sensor")
                .ct(0u16),
        )
        .get("/hum", ok)
        .attributes("/hum", ResourceAttributes::new().rt("humidity"));
    let app = Router::new()
        .get("/hello", ok)
        .get("/secret", ok)
        .attributes("/secret", ResourceAttributes::new().hidden())
        .nest("/sensors", sensors);
    let (addr, _h, _t) = serve(rt, app).await;
    let client = client().await;
    let wkc = format!("coap://{addr}/.well-known/core");
    let rsp = client.get(&wkc).await.unwrap();
    assert_eq!(rsp.content_format(), Some(ContentFormat::LINK_FORMAT));
    let doc = rsp.payload_str().unwrap();
    assert!(
        doc.contains("</hello>") && doc.contains("</sensors/temp>"),
        "{doc}"
    );
    assert!(
        doc.contains("</sensors/hum>") && !doc.contains("secret"),
        "{doc}"
    );
    let rsp = client.get(format!("{wkc}?rt=temp*")).await.unwrap();
    let doc = rsp.payload_str().unwrap();
    assert!(
        doc.starts_with("</sensors/temp>") && doc.contains("if=\"sensor\""),
        "{doc}"
    );
    assert!(!doc.contains("hum") && !doc.contains("hello"), "{doc}");
    let rsp = client.get(format!("{wkc}?href=/hello")).await.unwrap();
    assert_eq!(rsp.payload_str(), Some("</hello>"));
    let rsp = client.get(format!("{wkc}?rt=nothing")).await.unwrap();
    assert_eq!(rsp.code(), Code::CONTENT);
    assert!(rsp.payload().is_empty());
    let rsp = client.post(&wkc).await.unwrap();
    assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
}

async fn catch_all_routes_and_etags(rt: Rt) {
    let app = Router::new()
        .prefix_get("/files", |req: IncomingRequest| async move {
            let rest = req.rest().collect::<Vec<_>>().join("/");
            req.with_etag(Response::content(format!("file {rest}")))
        })
        .get("/files/special", |_req: IncomingRequest| async {
            Response::content("exact")
        });
    let (addr, _h, _t) = serve(rt, app).await;
    let client = client().await;
    let rsp = client
        .get(format!("coap://{addr}/files/a/b"))
        .await
        .unwrap();
    assert_eq!(rsp.payload_str(), Some("file a/b"));
    let etag = rsp.etag().expect("an ETag").to_vec();
    let rsp = client
        .get(format!("coap://{addr}/files/special"))
        .await
        .unwrap();
    assert_eq!(rsp.payload_str(), Some("exact"));
    let rsp = client
        .get(format!("coap://{addr}/files/a/b"))
        .etag(&etag)
        .await
        .unwrap();
    assert_eq!(rsp.code(), Code::VALID);
    assert!(rsp.payload().is_empty());
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn large_bodies_both_ways(rt: Rt) {
    let app = Router::new()
        .get("/big", |req: IncomingRequest| async move {
            let len = req.query_value("len").and_then(|v| v.parse().ok());
            Response::content(pattern(len.unwrap_or(0)))
        })
        .put("/big", |req: IncomingRequest| async move {
            let intact = req.payload()[..] == pattern(req.payload().len())[..];
            Response::new(Code::CHANGED).with_payload(format!("{} {intact}", req.payload().len()))
        })
        .post("/echo", |req: IncomingRequest| async move {
            Response::content(req.payload().clone())
        });
    let (addr, handle, _t) = serve(rt, app).await;
    let client = client().await;
    // Block2 downloads, reassembled by the engine (RFC 7959).
    for len in [1024, 1025, 20_000, 100_000] {
        let rsp = client
            .get(format!("coap://{addr}/big?len={len}"))
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert!(rsp.payload()[..] == pattern(len)[..], "{len}");
    }
    // Block1 uploads, reassembled before the handler sees them.
    for len in [2048, 30_000] {
        let rsp = client
            .put(format!("coap://{addr}/big"))
            .payload(pattern(len))
            .await
            .unwrap();
        assert_eq!(rsp.payload_str(), Some(format!("{len} true").as_str()));
    }
    // Both ways in one exchange.
    let body = pattern(50_000);
    let rsp = client
        .post(format!("coap://{addr}/echo"))
        .payload(body.clone())
        .await
        .unwrap();
    assert!(rsp.payload()[..] == body[..]);
    assert!(client.pending_requests().await.unwrap().is_empty());
    assert!(handle.pending_incoming().await.unwrap().is_empty());
}

/// An observable counter whose observer count is reported on the returned channel.
fn counter_app(value: Arc<AtomicUsize>) -> (Router, Receiver<usize>) {
    let (tx, rx) = async_channel::unbounded();
    let hooks = ObserveHooks::new()
        .accept(|req: &IncomingRequest| req.query_value("deny").is_none())
        .on_observer_count(move |n| {
            let _ = tx.try_send(n);
        });
    let app = Router::new()
        .observable_with(
            "/counter",
            move |_req: IncomingRequest| {
                let v = value.load(Ordering::SeqCst);
                async move { Response::content(v.to_string()) }
            },
            hooks,
        )
        .get("/plain", |_req: IncomingRequest| async {
            Response::content("plain")
        });
    (app, rx)
}

async fn observe_and_cancel_actively(rt: Rt) {
    let value = Arc::new(AtomicUsize::new(0));
    let (app, counts) = counter_app(Arc::clone(&value));
    let (addr, handle, _t) = serve(rt, app).await;
    let notifier = handle.notifier("/counter");
    let client = client().await;
    let mut obs = client
        .observe(format!("coap://{addr}/counter"))
        .await
        .unwrap();
    let first = obs.next().await.unwrap().unwrap();
    assert_eq!(first.payload_str(), Some("0"));
    assert!(first.is_fresh() && first.sequence().is_some());
    assert_eq!(counts.recv().await.unwrap(), 1);
    assert_eq!(notifier.observer_count().await.unwrap(), 1);
    // Without a representation the handler renders the new state.
    value.store(1, Ordering::SeqCst);
    assert_eq!(notifier.notify().await.unwrap(), 1);
    let n = obs.next().await.unwrap().unwrap();
    assert_eq!(n.payload_str(), Some("1"));
    assert!(n.sequence() > first.sequence());
    // With one, it goes out as is.
    let sent = notifier.notify_with(Response::content("direct")).await;
    assert_eq!(sent.unwrap(), 1);
    let n = obs.next().await.unwrap().unwrap();
    assert_eq!(n.payload_str(), Some("direct"));
    // Active cancellation (RFC 7641 §3.6): its answer is the last item.
    assert!(obs.cancel().await.unwrap());
    let last = obs.next().await.unwrap().unwrap();
    assert_eq!(last.code(), Code::CONTENT);
    assert_eq!(last.sequence(), None);
    assert!(obs.next().await.is_none());
    assert_eq!(counts.recv().await.unwrap(), 0);
    assert!(client.pending_requests().await.unwrap().is_empty());
}

async fn dropping_an_observation_ends_it(rt: Rt) {
    let (app, counts) = counter_app(Arc::new(AtomicUsize::new(7)));
    let (addr, handle, _t) = serve(rt, app).await;
    let notifier = handle.notifier("counter/");
    let client = client().await;
    let mut obs = client
        .observe(format!("coap://{addr}/counter"))
        .await
        .unwrap();
    assert_eq!(obs.next().await.unwrap().unwrap().payload_str(), Some("7"));
    assert_eq!(counts.recv().await.unwrap(), 1);
    drop(obs);
    assert!(client.pending_requests().await.unwrap().is_empty());
    // The next notification is answered with Reset, which removes the observer.
    notifier.notify().await.unwrap();
    assert_eq!(counts.recv().await.unwrap(), 0);
    assert_eq!(notifier.observer_count().await.unwrap(), 0);
}

async fn observing_what_cannot_be_observed(rt: Rt) {
    let (app, _counts) = counter_app(Arc::new(AtomicUsize::new(3)));
    let (addr, handle, _t) = serve(rt, app).await;
    let client = client().await;
    for path in ["/plain", "/counter?deny"] {
        let mut obs = client
            .observe(format!("coap://{addr}{path}"))
            .await
            .unwrap();
        let only = obs.next().await.unwrap().unwrap();
        assert_eq!(only.sequence(), None, "{path}");
        assert!(obs.next().await.is_none(), "{path}");
    }
    let notifier = handle.notifier("/counter");
    assert_eq!(notifier.observer_count().await.unwrap(), 0);
    // An error notification ends the observation on both sides (RFC 7641 §4.2).
    let mut obs = client
        .observe(format!("coap://{addr}/counter"))
        .await
        .unwrap();
    assert!(obs.next().await.unwrap().is_ok());
    let gone = notifier.notify_with(Response::new(Code::NOT_FOUND)).await;
    assert_eq!(gone.unwrap(), 1);
    assert_eq!(obs.next().await.unwrap().unwrap().code(), Code::NOT_FOUND);
    assert!(matches!(obs.next().await.unwrap(), Err(Error::Exchange(_))));
    assert!(obs.next().await.is_none());
    assert_eq!(notifier.observer_count().await.unwrap(), 0);
}

async fn closed_port_fails_fast(_rt: Rt) {
    for (bind, target) in [("127.0.0.1:0", "127.0.0.1"), ("[::]:0", "127.0.0.1")] {
        let Ok(client) = Client::bind(bind).await else {
            continue;
        };
        let probe = UdpSocket::bind(format!("{target}:0")).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let start = Instant::now();
        let result = client
            .get(format!("coap://{target}:{port}/x"))
            .timeout(Duration::from_secs(20))
            .await;
        if cfg!(target_os = "linux") {
            // IP_RECVERR shows the ICMP port unreachable to an unconnected socket.
            assert!(
                matches!(result, Err(Error::Unreachable)),
                "{bind}: {result:?}"
            );
            assert!(start.elapsed() < Duration::from_secs(2));
        } else {
            assert!(result.is_err());
        }
        assert!(client.pending_requests().await.unwrap().is_empty());
    }
}

/// A socket that never answers and counts what it gets.
async fn silent_peer(rt: Rt) -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = Async::<UdpSocket>::bind(([127, 0, 0, 1], 0)).unwrap();
    let addr = socket.get_ref().local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    rt.spawn(async move {
        let mut buf = [0u8; 2048];
        while socket.recv_from(&mut buf).await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

/// Retransmission timing short enough for a test: ACK_TIMEOUT `ack` without jitter.
fn quick_config(ack: Duration) -> Config {
    let mut config = Config::default();
    config.ack_timeout = ack;
    config.ack_random_factor = 1.0;
    config
}

async fn silent_peer_times_out(rt: Rt) {
    let (addr, count) = silent_peer(rt).await;
    let client = Client::builder()
        .config(quick_config(Duration::from_millis(20)))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let start = Instant::now();
    let err = client.get(format!("coap://{addr}/x")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    // MAX_TRANSMIT_WAIT = ACK_TIMEOUT × (2^(MAX_RETRANSMIT + 1) − 1) × ACK_RANDOM_FACTOR
    // (RFC 7252 §4.8.2): 20 ms × 31 here.
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    // The request and MAX_RETRANSMIT = 4 retransmissions.
    eventually("5 datagrams", || async {
        count.load(Ordering::SeqCst) == 5
    })
    .await;
    assert!(client.pending_requests().await.unwrap().is_empty());
    // A NON request with its own timeout.
    let err = client
        .get(format!("coap://{addr}/x"))
        .non()
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout));
    eventually("6 datagrams", || async {
        count.load(Ordering::SeqCst) == 6
    })
    .await;
}

async fn dropped_futures_leave_no_state(rt: Rt) {
    let (addr, count) = silent_peer(rt).await;
    let mut config = quick_config(Duration::from_millis(1000));
    config.nstart = 8;
    let client = Client::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let mut futures = Vec::new();
    for i in 0..20 {
        futures.push(Box::pin(client.get(format!("coap://{addr}/r{i}")).send()));
    }
    // One poll each puts them under way: 8 in flight, 12 queued behind NSTART.
    for f in futures.iter_mut() {
        assert!(future::poll_once(f.as_mut()).await.is_none());
    }
    let listed = client.pending_requests().await.unwrap();
    assert_eq!(listed.len(), 20);
    assert!(listed
        .iter()
        .all(|p| p.peer == addr && p.method == Code::GET));
    assert!(listed.iter().any(|p| p.uri.ends_with("/r7")));
    // Queued ones first: dropping one in flight first would free its NSTART slot for a
    // queued request, which would go out before its own cancel arrives.
    while let Some(f) = futures.pop() {
        drop(f);
    }
    // Dropped before it was ever polled: never reaches the engine.
    drop(client.get(format!("coap://{addr}/never")).send());
    // A timeout drops the inner future, which cancels too.
    let err = client
        .get(format!("coap://{addr}/t"))
        .timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout));
    assert!(client.pending_requests().await.unwrap().is_empty());
    // Past the first retransmission time, nothing was retransmitted.
    sleep(Duration::from_millis(1300)).await;
    assert_eq!(count.load(Ordering::SeqCst), 9, "8 in flight + 1 timed out");
}

async fn pending_lists_and_cancel_by_id(rt: Rt) {
    let app = Router::new().get("/slow", |_req: IncomingRequest| async {
        sleep(Duration::from_millis(500)).await;
        Response::content("late")
    });
    let (addr, handle, _t) = serve(rt, app).await;
    let client = client().await;
    let request = rt.spawn({
        let client = client.clone();
        async move { client.get(format!("coap://{addr}/slow?x=1")).await }
    });
    eventually("the request arrives", || async {
        handle.pending_incoming().await.unwrap().len() == 1
    })
    .await;
    let incoming = handle.pending_incoming().await.unwrap();
    assert_eq!(incoming[0].method, Code::GET);
    assert_eq!(incoming[0].uri, "/slow?x=1");
    assert_eq!(incoming[0].peer, client.local_addr());
    let outgoing = client.pending_requests().await.unwrap();
    assert_eq!(outgoing.len(), 1);
    assert_eq!(outgoing[0].token, incoming[0].token);
    assert!(client.cancel(outgoing[0].id).await.unwrap());
    assert!(!client.cancel(outgoing[0].id).await.unwrap());
    let result = request.recv().await.unwrap();
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    // The late answer is reset by the client, and the server forgets the request.
    eventually("the server forgets", || async {
        handle.pending_incoming().await.unwrap().is_empty()
    })
    .await;
}

async fn thousands_of_concurrent_requests(rt: Rt) {
    let app = Router::new().get("/n", |req: IncomingRequest| async move {
        Response::content(req.query_value("i").unwrap_or("?").to_owned())
    });
    let (addr, _h, _t) = serve(rt, app).await;
    let mut config = Config::default();
    config.nstart = 256;
    let client = Client::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let mut answers = Vec::new();
    for i in 0..2000u32 {
        let request = client.get(format!("coap://{addr}/n?i={i}"));
        answers.push((i, rt.spawn(async move { request.await })));
    }
    for (i, answer) in answers {
        let rsp = answer.recv().await.unwrap().unwrap();
        assert_eq!(rsp.payload_str(), Some(i.to_string().as_str()));
    }
    assert!(client.pending_requests().await.unwrap().is_empty());
}

async fn graceful_shutdown(rt: Rt) {
    let app = Router::new()
        .get("/slow", |_req: IncomingRequest| async {
            sleep(Duration::from_millis(500)).await;
            Response::content("finished")
        })
        .get("/fast", |_req: IncomingRequest| async {
            Response::content("fast")
        });
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let served = rt.spawn(server.serve_with_shutdown(app, async move {
        let _ = stop_rx.recv().await;
    }));
    let client = client().await;
    let slow = rt.spawn({
        let client = client.clone();
        async move { client.get(format!("coap://{addr}/slow")).await }
    });
    sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).await.unwrap();
    // Closing: new requests are turned away with 5.03 ...
    let rsp = client.get(format!("coap://{addr}/fast")).await.unwrap();
    assert_eq!(rsp.code(), Code::SERVICE_UNAVAILABLE);
    // ... while the one under way is answered, and then the server stops.
    let rsp = slow.recv().await.unwrap().unwrap();
    assert_eq!(rsp.payload_str(), Some("finished"));
    served.recv().await.unwrap().unwrap();
    let err = client
        .get(format!("coap://{addr}/fast"))
        .timeout(Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unreachable | Error::Timeout),
        "{err:?}"
    );
}

async fn shutdown_by_handles_and_ping(rt: Rt) {
    let (addr, handle, served) = serve(rt, echo_app()).await;
    let client = client().await;
    assert!(client.ping(&format!("coap://{addr}")).await.is_ok());
    client.shutdown().await.unwrap();
    let err = client.get(format!("coap://{addr}/echo")).await.unwrap_err();
    assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    // A request sent the moment the driver stops must fail, not hang: repeat the race.
    for _ in 0..20 {
        let other = Client::bind("127.0.0.1:0").await.unwrap();
        other.shutdown().await.unwrap();
        let err = other.get(format!("coap://{addr}/echo")).await.unwrap_err();
        assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    }
    handle.shutdown().await.unwrap();
    served.recv().await.unwrap().unwrap();
    let err = handle.stats().await.unwrap_err();
    assert!(matches!(err, Error::ShuttingDown), "{err:?}");
}

async fn uri_errors(_rt: Rt) {
    let client = client().await;
    let err = client.get("not a uri").await.unwrap_err();
    assert!(matches!(err, Error::InvalidUri(_)), "{err:?}");
    let err = client.get("coaps://127.0.0.1/x").await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedScheme(_)), "{err:?}");
    let err = client.get("coap://host.invalid/x").await.unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    let err = client.get("coap://[::1]:5683/x").await.unwrap_err();
    assert!(matches!(err, Error::NoUsableAddress { .. }), "{err:?}");
}

async fn server_handle_sends_from_the_server_socket(rt: Rt) {
    let (addr_a, _ha, _ta) = serve(rt, echo_app()).await;
    let (addr_b, handle_b, _tb) = serve(rt, Router::new()).await;
    let rsp = handle_b
        .client()
        .post(format!("coap://{addr_a}/echo"))
        .payload("from b")
        .await
        .unwrap();
    assert_eq!(rsp.payload_str(), Some("0.02 /echo from b"));
    assert_eq!(handle_b.local_addr(), addr_b);
    assert!(handle_b.stats().await.unwrap().datagrams_received >= 1);
}

async fn multicast_window_closes(_rt: Rt) {
    let client = Client::bind("0.0.0.0:0").await.unwrap();
    let Ok(mut responses) = client
        .get("coap://224.0.1.187:5683/.well-known/core")
        .timeout(Duration::from_millis(300))
        .multicast()
        .await
    else {
        eprintln!("SKIP: no multicast route");
        return;
    };
    let start = Instant::now();
    while let Some(item) = responses.next().await {
        let _ = item;
    }
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert!(client.pending_requests().await.unwrap().is_empty());
}

async fn socket_options_reach_the_socket(_rt: Rt) {
    let client = Client::builder()
        .recv_buffer_size(1 << 18)
        .send_buffer_size(1 << 17)
        .dscp(46)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    assert!(client.recv_buffer_size().unwrap() >= 1 << 18);
    assert!(client.send_buffer_size().unwrap() >= 1 << 17);
    let err = Client::builder().dscp(64).bind("127.0.0.1:0").await;
    assert!(err.is_err());
}

macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod async_std_runtime {
            $(
                #[async_std::test]
                async fn $name() {
                    super::bounded(super::$name(super::ASYNC_STD)).await
                }
            )*
        }
        mod smol_runtime {
            $(
                #[test]
                fn $name() {
                    smol::block_on(super::bounded(super::$name(super::SMOL)))
                }
            )*
        }
    };
}

on_both_runtimes!(
    every_method_reaches_its_handler,
    request_options_and_non,
    not_found_and_method_not_allowed,
    handler_errors_and_panics,
    slow_handlers_get_separate_responses,
    deferred_responses_through_a_responder,
    well_known_core_filtering,
    catch_all_routes_and_etags,
    large_bodies_both_ways,
    observe_and_cancel_actively,
    dropping_an_observation_ends_it,
    observing_what_cannot_be_observed,
    closed_port_fails_fast,
    silent_peer_times_out,
    dropped_futures_leave_no_state,
    pending_lists_and_cancel_by_id,
    thousands_of_concurrent_requests,
    graceful_shutdown,
    shutdown_by_handles_and_ping,
    uri_errors,
    server_handle_sends_from_the_server_socket,
    multicast_window_closes,
    socket_options_reach_the_socket,
);
