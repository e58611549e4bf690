//! Client and server over real loopback sockets.
//!
//! Every test is bounded by `tokio::time::timeout`. Tests where timers matter run on tokio's
//! paused clock (`start_paused`): the engine reads time through tokio, so retransmissions,
//! empty ACKs and timeouts happen in virtual time, and no test sleeps on the wall clock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coap_tokio::{
    Client, CoapError, Code, Config, ContentFormat, Error, IncomingRequest, MessageType,
    OptionNumber, ResourceAttributes, Response, Router, Server, ServerHandle,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The bound for a whole test, in (possibly virtual) time.
const LIMIT: Duration = Duration::from_secs(600);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

/// Starts a server for `app` on 127.0.0.1 and returns its address and handle.
async fn serve(app: Router) -> (SocketAddr, ServerHandle, JoinHandle<Result<(), Error>>) {
    serve_on("127.0.0.1:0", Config::default(), app).await
}

async fn serve_on(
    addr: &str,
    config: Config,
    app: Router,
) -> (SocketAddr, ServerHandle, JoinHandle<Result<(), Error>>) {
    let server = Server::builder().config(config).bind(addr).await.unwrap();
    let local = server.local_addr();
    let handle = server.handle();
    let task = tokio::spawn(server.serve(app));
    (local, handle, task)
}

fn echo_app() -> Router {
    let echo = |req: IncomingRequest| async move {
        let text = format!(
            "{} {} {}",
            req.method(),
            req.path_string(),
            req.payload_str().unwrap_or("<binary>")
        );
        Response::content(text)
    };
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

#[tokio::test]
async fn every_method_reaches_its_handler() {
    bounded(async {
        let (addr, _h, _t) = serve(echo_app()).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("coap://{addr}/echo");
        let cases = [
            (client.get(&uri), "0.01 /echo "),
            (client.post(&uri).payload("p"), "0.02 /echo p"),
            (client.put(&uri).payload("u"), "0.03 /echo u"),
            (client.delete(&uri), "0.04 /echo "),
            (client.fetch(&uri).payload("f"), "0.05 /echo f"),
            (client.patch(&uri).payload("pa"), "0.06 /echo pa"),
            (client.ipatch(&uri).payload("ip"), "0.07 /echo ip"),
            (client.request(Code::new(0, 20), &uri), "0.20 /echo "),
        ];
        for (request, expected) in cases {
            let rsp = request.await.unwrap();
            assert_eq!(rsp.code(), Code::CONTENT);
            assert_eq!(rsp.payload_str(), Some(expected));
            assert_eq!(rsp.peer(), addr);
            assert_eq!(rsp.uri().to_string(), uri);
            // Answered at once: piggybacked on the ACK.
            assert_eq!(rsp.message_type(), MessageType::Ack);
        }
        let err = client.request(Code::CONTENT, &uri).await.unwrap_err();
        assert!(matches!(err, Error::NotARequest(_)), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn ipv6_and_dual_stack_clients() {
    bounded(async {
        let (addr4, _h4, _t4) = serve(echo_app()).await;
        let Ok(server6) = Server::bind("[::1]:0").await else {
            eprintln!("SKIP: no IPv6 loopback");
            return;
        };
        let addr6 = server6.local_addr();
        tokio::spawn(server6.serve(echo_app()));
        let client = Client::bind("[::]:0").await.unwrap();
        let rsp = client.get(format!("coap://{addr6}/echo")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("0.01 /echo "));
        assert_eq!(rsp.peer(), addr6);
        // The same dual-stack socket reaches the IPv4 server; the peer shows as IPv4.
        let rsp = client.get(format!("coap://{addr4}/echo")).await.unwrap();
        assert_eq!(rsp.peer(), addr4);
        // A host name resolves (localhost: whichever family the resolver gives first).
        let rsp = client
            .get(format!("coap://localhost:{}/echo", addr4.port()))
            .timeout(Duration::from_secs(10))
            .await;
        if let Ok(rsp) = rsp {
            assert_eq!(rsp.payload_str(), Some("0.01 /echo "));
        }
        // An IPv4-only socket cannot reach an IPv6 address.
        let v4 = Client::bind("127.0.0.1:0").await.unwrap();
        let err = v4.get(format!("coap://{addr6}/echo")).await.unwrap_err();
        assert!(matches!(err, Error::NoUsableAddress { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn request_builder_options_arrive() {
    bounded(async {
        let app = Router::new().post("/opts", |req: IncomingRequest| async move {
            let o = req.options();
            let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let text = format!(
                "cf={:?} accept={:?} etags={:?} ifm={:?} inm={} q={:?} s={:?} u={:?} x={:?} t={}",
                o.content_format().map(|c| c.0),
                o.accept().map(|c| c.0),
                o.etags().map(hex).collect::<Vec<_>>(),
                o.if_match().map(hex).collect::<Vec<_>>(),
                o.if_none_match(),
                req.query().collect::<Vec<_>>(),
                o.get_str(OptionNumber(65000)),
                o.get_uint(OptionNumber(65004)),
                o.get(OptionNumber(65008)).map(hex),
                req.message_type(),
            );
            Response::content(text)
        });
        let (addr, _h, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let rsp = client
            .post(format!("coap://{addr}/opts?a=1"))
            .payload("{}")
            .content_format(ContentFormat::JSON)
            .accept(ContentFormat::CBOR)
            .etag([1, 2])
            .etag([3])
            .if_match([0xaa])
            .if_none_match()
            .query("b=2")
            .option_str(OptionNumber(65000), "str")
            .option_uint(OptionNumber(65004), 300)
            .option(OptionNumber(65008), [0xde, 0xad])
            .non()
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(
            rsp.payload_str().unwrap(),
            "cf=Some(50) accept=Some(60) etags=[\"0102\", \"03\"] ifm=[\"aa\"] inm=true \
             q=[\"a=1\", \"b=2\"] s=Some(\"str\") u=Some(300) x=Some(\"dead\") t=NON"
        );
        // A NON request gets a NON response (RFC 7252 §5.2.3).
        assert_eq!(rsp.message_type(), MessageType::Non);
    })
    .await;
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    bounded(async {
        let (addr, _h, _t) = serve(echo_app().get("/only-get", |_r: IncomingRequest| async {
            Response::content("x")
        }))
        .await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let rsp = client.get(format!("coap://{addr}/missing")).await.unwrap();
        assert_eq!(rsp.code(), Code::NOT_FOUND);
        let rsp = client.put(format!("coap://{addr}/only-get")).await.unwrap();
        assert_eq!(rsp.code(), Code::METHOD_NOT_ALLOWED);
        // A plain client answers requests sent to it 4.04.
        let other = Client::bind("127.0.0.1:0").await.unwrap();
        let rsp = client
            .get(format!("coap://{}/x", other.local_addr()))
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn handler_errors_map_to_codes() {
    bounded(async {
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
            .get("/boom", |_req: IncomingRequest| async {
                Err::<Response, _>(CoapError::internal("database down"))
            });
        let (addr, _h, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
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
        let rsp = client.get(format!("coap://{addr}/boom")).await.unwrap();
        assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR);
        assert_eq!(rsp.payload_str(), Some("database down"));
    })
    .await;
}

#[tokio::test]
async fn panicking_handlers_answer_5_00() {
    bounded(async {
        let app = Router::new()
            .get("/now", |_req: IncomingRequest| async {
                if true {
                    panic!("handler bug");
                }
                Response::content("unreachable")
            })
            .get("/later", |_req: IncomingRequest| async {
                tokio::task::yield_now().await;
                if true {
                    panic!("handler bug after a wait");
                }
                Response::content("unreachable")
            });
        let (addr, handle, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        for path in ["now", "later", "now"] {
            let rsp = client.get(format!("coap://{addr}/{path}")).await.unwrap();
            assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR, "{path}");
        }
        assert!(handle.pending_incoming().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn slow_handlers_get_separate_responses() {
    bounded(async {
        let app = Router::new().get("/slow", |_req: IncomingRequest| async {
            // Far longer than the 100 ms after which the engine sends the empty ACK.
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::content("done")
        });
        let (addr, _h, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let start = tokio::time::Instant::now();
        let rsp = client.get(format!("coap://{addr}/slow")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("done"));
        // A separate response comes in its own Confirmable message (RFC 7252 §5.2.2).
        assert_eq!(rsp.message_type(), MessageType::Con);
        assert!(start.elapsed() >= Duration::from_secs(30));
        // The empty ACK stopped the client's retransmissions.
        assert_eq!(client.stats().await.unwrap().retransmissions, 0);
        // A NON request to a slow handler gets a NON response, without any ACK.
        let rsp = client
            .get(format!("coap://{addr}/slow"))
            .non()
            .await
            .unwrap();
        assert_eq!(rsp.message_type(), MessageType::Non);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn deferred_responses_through_a_responder() {
    bounded(async {
        let app = Router::new()
            .get("/deferred", |req: IncomingRequest| async move {
                let (responder, deferred) = req.defer();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    responder
                        .send(Response::content("from another task"))
                        .await
                        .unwrap();
                });
                deferred
            })
            .get("/dropped", |req: IncomingRequest| async move {
                let (responder, deferred) = req.defer();
                drop(responder);
                deferred
            })
            .get("/twice", |req: IncomingRequest| async move {
                let (responder, _deferred) = req.defer();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let again = responder.send(Response::content("second")).await;
                    assert!(matches!(again, Err(Error::AlreadyAnswered)), "{again:?}");
                });
                // The handler answers itself after all: the responder comes too late.
                Response::content("first")
            });
        let (addr, handle, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let rsp = client.get(format!("coap://{addr}/deferred")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("from another task"));
        assert_eq!(rsp.message_type(), MessageType::Con);
        let rsp = client.get(format!("coap://{addr}/dropped")).await.unwrap();
        assert_eq!(rsp.code(), Code::INTERNAL_SERVER_ERROR);
        let rsp = client.get(format!("coap://{addr}/twice")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("first"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(handle.pending_incoming().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn well_known_core_lists_routes_with_filtering() {
    bounded(async {
        let ok = |_req: IncomingRequest| async { Response::content("x") };
        let sensors = Router::new()
            .get("/temp", ok)
            .attributes(
                "/temp",
                ResourceAttributes::new()
                    .rt("temperature-c")
                    .interface("sensor")
                    .ct(0u16)
                    .observable(),
            )
            .get("/hum", ok)
            .attributes(
                "/hum",
                ResourceAttributes::new().rt("humidity").title("Humidity"),
            );
        let app = Router::new()
            .get("/hello", ok)
            .get("/secret", ok)
            .attributes("/secret", ResourceAttributes::new().hidden())
            .nest("/sensors", sensors);
        let (addr, _h, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let wkc = format!("coap://{addr}/.well-known/core");

        let rsp = client.get(&wkc).await.unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
        assert_eq!(rsp.content_format(), Some(ContentFormat::LINK_FORMAT));
        let doc = rsp.payload_str().unwrap().to_owned();
        assert!(doc.contains("</hello>"), "{doc}");
        assert!(doc.contains("</sensors/temp>"), "{doc}");
        assert!(doc.contains("</sensors/hum>"), "{doc}");
        assert!(!doc.contains("secret"), "{doc}");

        let doc = client
            .get(format!("{wkc}?rt=temperature-c"))
            .await
            .unwrap()
            .payload_str()
            .unwrap()
            .to_owned();
        assert!(doc.starts_with("</sensors/temp>"), "{doc}");
        assert!(
            doc.contains("obs") && doc.contains("if=\"sensor\""),
            "{doc}"
        );
        assert!(!doc.contains("hum") && !doc.contains("hello"), "{doc}");

        let doc = client.get(format!("{wkc}?rt=hum*")).await.unwrap();
        assert_eq!(
            doc.payload_str(),
            Some("</sensors/hum>;rt=\"humidity\";title=\"Humidity\"")
        );
        let doc = client.get(format!("{wkc}?href=/hello")).await.unwrap();
        assert_eq!(doc.payload_str(), Some("</hello>"));
        let none = client.get(format!("{wkc}?rt=nothing")).await.unwrap();
        assert_eq!(none.code(), Code::CONTENT);
        assert!(none.payload().is_empty());
        let bad = client.get(format!("{wkc}?=x")).await.unwrap();
        assert_eq!(bad.code(), Code::BAD_REQUEST);
        let post = client.post(&wkc).await.unwrap();
        assert_eq!(post.code(), Code::METHOD_NOT_ALLOWED);
    })
    .await;
}

#[tokio::test]
async fn catch_all_routes_and_etags() {
    bounded(async {
        let app = Router::new()
            .prefix_get("/files", |req: IncomingRequest| async move {
                let rest = req.rest().collect::<Vec<_>>().join("/");
                req.with_etag(Response::content(format!("file {rest}")))
            })
            .get("/files/special", |_req: IncomingRequest| async {
                Response::content("exact route wins")
            });
        let (addr, _h, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let rsp = client
            .get(format!("coap://{addr}/files/a/b.txt"))
            .await
            .unwrap();
        assert_eq!(rsp.payload_str(), Some("file a/b.txt"));
        let etag = rsp.etag().expect("an ETag").to_vec();
        let rsp = client.get(format!("coap://{addr}/files")).await.unwrap();
        assert_eq!(rsp.payload_str(), Some("file "));
        let rsp = client
            .get(format!("coap://{addr}/files/special"))
            .await
            .unwrap();
        assert_eq!(rsp.payload_str(), Some("exact route wins"));
        // The client already holds the representation: 2.03 Valid, no payload.
        let rsp = client
            .get(format!("coap://{addr}/files/a/b.txt"))
            .etag(&etag)
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::VALID);
        assert!(rsp.payload().is_empty());
        assert_eq!(rsp.etag(), Some(&etag[..]));
        let rsp = client
            .get(format!("coap://{addr}/files/other"))
            .etag(&etag)
            .await
            .unwrap();
        assert_eq!(rsp.code(), Code::CONTENT);
    })
    .await;
}

#[tokio::test]
async fn closed_port_fails_fast_through_icmp() {
    bounded(async {
        for (bind, target) in [
            ("127.0.0.1:0", "127.0.0.1"),
            ("[::]:0", "127.0.0.1"),
            ("[::]:0", "[::1]"),
        ] {
            let Ok(client) = Client::bind(bind).await else {
                continue;
            };
            let std_addr = format!("{}:0", target);
            let Ok(probe) = std::net::UdpSocket::bind(&std_addr) else {
                continue;
            };
            let port = probe.local_addr().unwrap().port();
            drop(probe);
            let start = std::time::Instant::now();
            let result = tokio::time::timeout(
                Duration::from_secs(20),
                client.get(format!("coap://{target}:{port}/x")).send(),
            )
            .await
            .expect("a closed port must not hang");
            if cfg!(target_os = "linux") {
                // IP_RECVERR makes the ICMP port unreachable visible on an unconnected socket.
                assert!(
                    matches!(result, Err(Error::Unreachable)),
                    "{bind} -> {target}: {result:?}"
                );
                assert!(start.elapsed() < Duration::from_secs(2));
            } else {
                assert!(result.is_err());
            }
            assert!(client.pending_requests().await.unwrap().is_empty());
        }
    })
    .await;
}

/// A UDP socket that never answers and counts what it receives.
async fn silent_peer() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while socket.recv_from(&mut buf).await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

#[tokio::test(start_paused = true)]
async fn silent_peer_times_out_after_retransmissions() {
    bounded(async {
        let (addr, count) = silent_peer().await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let start = tokio::time::Instant::now();
        let err = client.get(format!("coap://{addr}/x")).await.unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        // MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2) is between 62 and 93 s with the defaults.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(62) && waited <= Duration::from_secs(94),
            "{waited:?}"
        );
        // The request and MAX_RETRANSMIT = 4 retransmissions.
        assert_eq!(count.load(Ordering::SeqCst), 5);
        assert!(client.pending_requests().await.unwrap().is_empty());
        // A NON request with a timeout of its own.
        let err = client
            .get(format!("coap://{addr}/x"))
            .non()
            .timeout(Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout));
        assert_eq!(count.load(Ordering::SeqCst), 6);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_leave_no_state() {
    bounded(async {
        let (addr, count) = silent_peer().await;
        let mut config = Config::default();
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
        // Poll each once so they are under way (8 in flight, 12 queued behind NSTART).
        for f in futures.iter_mut() {
            let polled = tokio::time::timeout(Duration::from_millis(10), f.as_mut()).await;
            assert!(polled.is_err(), "no answer is possible");
        }
        let listed = client.pending_requests().await.unwrap();
        assert_eq!(listed.len(), 20);
        assert!(listed
            .iter()
            .all(|p| p.peer == addr && p.method == Code::GET));
        assert!(listed.iter().any(|p| p.uri.ends_with("/r7")));
        // Queued ones first: dropping an in-flight one first would free its NSTART slot for a
        // queued request, which would then be sent before its own cancel arrives.
        while let Some(f) = futures.pop() {
            drop(f);
        }
        // A future dropped right after creation never reaches the engine.
        drop(client.get(format!("coap://{addr}/never")).send());
        // A timeout drops the inner future: same thing.
        let err = client
            .get(format!("coap://{addr}/t"))
            .timeout(Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout));
        assert!(client.pending_requests().await.unwrap().is_empty());
        // Nothing is retransmitted afterwards.
        let sent = count.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(count.load(Ordering::SeqCst), sent);
        assert_eq!(
            sent, 9,
            "8 first transmissions, 1 for the timed-out request"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn pending_lists_and_cancel_by_id() {
    bounded(async {
        let app = Router::new().get("/slow", |_req: IncomingRequest| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Response::content("late")
        });
        let (addr, handle, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let request = tokio::spawn({
            let client = client.clone();
            async move { client.get(format!("coap://{addr}/slow?x=1")).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let incoming = handle.pending_incoming().await.unwrap();
        assert_eq!(incoming.len(), 1);
        assert_eq!(incoming[0].method, Code::GET);
        assert_eq!(incoming[0].uri, "/slow?x=1");
        assert_eq!(incoming[0].peer, client.local_addr());
        let outgoing = client.pending_requests().await.unwrap();
        assert_eq!(outgoing.len(), 1);
        assert_eq!(outgoing[0].token, incoming[0].token);
        assert!(client.cancel(outgoing[0].id).await.unwrap());
        assert!(!client.cancel(outgoing[0].id).await.unwrap());
        let result = request.await.unwrap();
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        // The server answers later; the client resets the unwanted response, and the server
        // forgets the request.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(handle.pending_incoming().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_requests() {
    bounded(async {
        let app = Router::new().get("/n", |req: IncomingRequest| async move {
            Response::content(req.query_value("i").unwrap_or("?").to_owned())
        });
        let (addr, _h, _t) = serve(app).await;
        let mut config = Config::default();
        config.nstart = 256;
        let client = Client::builder()
            .config(config)
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..2000u32 {
            let request = client.get(format!("coap://{addr}/n?i={i}"));
            tasks.spawn(async move { (i, request.await) });
        }
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            let (i, rsp) = joined.unwrap();
            let rsp = rsp.unwrap();
            assert_eq!(rsp.payload_str(), Some(i.to_string().as_str()));
            done += 1;
        }
        assert_eq!(done, 2000);
        assert!(client.pending_requests().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_finishes_what_is_under_way() {
    bounded(async {
        let app = Router::new()
            .get("/slow", |_req: IncomingRequest| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Response::content("finished")
            })
            .get("/fast", |_req: IncomingRequest| async {
                Response::content("fast")
            });
        let server = Server::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.serve_with_shutdown(app, async {
            let _ = stop_rx.await;
        }));
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let slow = tokio::spawn({
            let client = client.clone();
            async move { client.get(format!("coap://{addr}/slow")).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Closing: new requests are turned away with 5.03 ...
        let rsp = client.get(format!("coap://{addr}/fast")).await.unwrap();
        assert_eq!(rsp.code(), Code::SERVICE_UNAVAILABLE);
        // ... while the one under way is answered, and then the server stops.
        let rsp = slow.await.unwrap().unwrap();
        assert_eq!(rsp.payload_str(), Some("finished"));
        served.await.unwrap().unwrap();
        // The socket is closed: the port refuses.
        let err = client
            .get(format!("coap://{addr}/fast"))
            .timeout(Duration::from_secs(200))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Unreachable | Error::Timeout),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn client_shutdown_and_handle_shutdown() {
    bounded(async {
        let (addr, handle, task) = serve(echo_app()).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        assert!(client.ping(&format!("coap://{addr}")).await.is_ok());
        client.shutdown().await.unwrap();
        let err = client.get(format!("coap://{addr}/echo")).await.unwrap_err();
        assert!(matches!(err, Error::ShuttingDown), "{err:?}");
        handle.shutdown().await.unwrap();
        task.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn uri_errors_are_reported() {
    bounded(async {
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let err = client.get("not a uri").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUri(_)), "{err:?}");
        let err = client.get("coaps://127.0.0.1/x").await.unwrap_err();
        assert!(matches!(err, Error::UnsupportedScheme(_)), "{err:?}");
        let err = client.get("coap://host.invalid/x").await.unwrap_err();
        assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn server_handle_sends_from_the_server_socket() {
    bounded(async {
        let (addr_a, _ha, _ta) = serve(echo_app()).await;
        let (addr_b, handle_b, _tb) = serve(Router::new()).await;
        let rsp = handle_b
            .client()
            .post(format!("coap://{addr_a}/echo"))
            .payload("from b")
            .await
            .unwrap();
        assert_eq!(rsp.payload_str(), Some("0.02 /echo from b"));
        assert_eq!(handle_b.local_addr(), addr_b);
        assert!(handle_b.stats().await.unwrap().datagrams_received >= 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn multicast_request_collects_until_its_window_closes() {
    bounded(async {
        let client = Client::bind("0.0.0.0:0").await.unwrap();
        // Nobody answers on this group here; the stream still ends at the deadline.
        let Ok(mut responses) = client
            .get("coap://224.0.1.187:5683/.well-known/core")
            .timeout(Duration::from_secs(2))
            .multicast()
            .await
        else {
            eprintln!("SKIP: no multicast route");
            return;
        };
        let start = tokio::time::Instant::now();
        while let Some(item) = responses.next().await {
            let _ = item;
        }
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert!(client.pending_requests().await.unwrap().is_empty());
    })
    .await;
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn large_bodies_both_ways() {
    bounded(async {
        let app = Router::new()
            .get("/big", |req: IncomingRequest| async move {
                let len = req
                    .query_value("len")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Response::content(pattern(len))
            })
            .put("/big", |req: IncomingRequest| async move {
                let ok = req.payload()[..] == pattern(req.payload().len())[..];
                Response::new(Code::CHANGED).with_payload(format!("{} {ok}", req.payload().len()))
            })
            .post("/echo-big", |req: IncomingRequest| async move {
                Response::content(req.payload().clone())
            });
        let (addr, handle, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        // Downloads in 1024-byte blocks (RFC 7959 Block2), reassembled by the engine.
        for len in [1024, 1025, 20_000, 100_000] {
            let rsp = client
                .get(format!("coap://{addr}/big?len={len}"))
                .await
                .unwrap();
            assert_eq!(rsp.code(), Code::CONTENT, "{len}");
            assert_eq!(rsp.payload().len(), len);
            assert!(rsp.payload()[..] == pattern(len)[..]);
        }
        // Uploads in blocks (Block1), reassembled before the handler sees them.
        for len in [2048, 30_000] {
            let rsp = client
                .put(format!("coap://{addr}/big"))
                .payload(pattern(len))
                .await
                .unwrap();
            assert_eq!(rsp.code(), Code::CHANGED);
            assert_eq!(rsp.payload_str(), Some(format!("{len} true").as_str()));
        }
        // Both ways in one exchange.
        let body = pattern(50_000);
        let rsp = client
            .post(format!("coap://{addr}/echo-big"))
            .payload(body.clone())
            .await
            .unwrap();
        assert!(rsp.payload()[..] == body[..]);
        assert!(client.pending_requests().await.unwrap().is_empty());
        assert!(handle.pending_incoming().await.unwrap().is_empty());
    })
    .await;
}

/// An observable counter: GET renders the current value; the test bumps it and notifies.
fn counter_app(value: Arc<AtomicUsize>, observers: Arc<watch::Sender<usize>>) -> Router {
    let hooks = coap_tokio::ObserveHooks::new()
        .accept(|req: &IncomingRequest| req.query_value("deny").is_none())
        .on_observer_count(move |n| {
            observers.send_replace(n);
        });
    Router::new()
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
        })
}

#[tokio::test]
async fn observe_notifications_and_active_cancel() {
    bounded(async {
        let value = Arc::new(AtomicUsize::new(0));
        let (observers, count) = watch::channel(0);
        let (addr, handle, _t) = serve(counter_app(Arc::clone(&value), Arc::new(observers))).await;
        let notifier = handle.notifier("/counter");
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let mut obs = client
            .observe(format!("coap://{addr}/counter"))
            .await
            .unwrap();

        let first = obs.next().await.unwrap().unwrap();
        assert_eq!(first.payload_str(), Some("0"));
        assert!(first.is_fresh());
        assert!(first.sequence().is_some());
        assert_eq!(notifier.observer_count().await.unwrap(), 1);
        assert_eq!(*count.borrow(), 1);

        // Without a representation the route's handler renders the new state.
        value.store(1, Ordering::SeqCst);
        assert_eq!(notifier.notify().await.unwrap(), 1);
        let n = obs.next().await.unwrap().unwrap();
        assert_eq!(n.payload_str(), Some("1"));
        assert!(n.sequence() > first.sequence());

        // With one, it goes out as is.
        assert_eq!(
            notifier
                .notify_with(Response::content("direct"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            obs.next().await.unwrap().unwrap().payload_str(),
            Some("direct")
        );

        // Active cancellation: a GET with Observe = 1; its answer ends the stream.
        assert!(obs.cancel().await.unwrap());
        let last = obs.next().await.unwrap().unwrap();
        assert_eq!(last.code(), Code::CONTENT);
        assert_eq!(last.sequence(), None);
        assert!(obs.next().await.is_none());
        assert_eq!(notifier.observer_count().await.unwrap(), 0);
        assert_eq!(*count.borrow(), 0);
        assert!(client.pending_requests().await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn dropping_an_observation_ends_it() {
    bounded(async {
        let value = Arc::new(AtomicUsize::new(7));
        let (observers, mut count) = watch::channel(0);
        let (addr, handle, _t) = serve(counter_app(value, Arc::new(observers))).await;
        let notifier = handle.notifier("/counter");
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let mut obs = client
            .observe(format!("coap://{addr}/counter"))
            .await
            .unwrap();
        assert_eq!(obs.next().await.unwrap().unwrap().payload_str(), Some("7"));
        assert_eq!(notifier.observer_count().await.unwrap(), 1);
        drop(obs);
        assert!(client.pending_requests().await.unwrap().is_empty());
        assert_eq!(*count.borrow_and_update(), 1);
        // The next notification is answered with Reset, which removes the observer.
        notifier.notify().await.unwrap();
        count.wait_for(|n| *n == 0).await.unwrap();
        assert_eq!(notifier.observer_count().await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn observing_what_cannot_be_observed() {
    bounded(async {
        let value = Arc::new(AtomicUsize::new(3));
        let (observers, _count) = watch::channel(0);
        let (addr, handle, _t) = serve(counter_app(value, Arc::new(observers))).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        // A plain route, and an observable one whose hook declines: one answer, then the end.
        for path in ["/plain", "/counter?deny"] {
            let mut obs = client
                .observe(format!("coap://{addr}{path}"))
                .await
                .unwrap();
            let only = obs.next().await.unwrap().unwrap();
            assert_eq!(only.code(), Code::CONTENT, "{path}");
            assert_eq!(only.sequence(), None, "{path}");
            assert!(obs.next().await.is_none(), "{path}");
        }
        assert_eq!(
            handle.notifier("/counter").observer_count().await.unwrap(),
            0
        );
        // An error notification ends the observation on both sides (RFC 7641 §4.2).
        let mut obs = client
            .observe(format!("coap://{addr}/counter"))
            .await
            .unwrap();
        assert!(obs.next().await.unwrap().is_ok());
        let notifier = handle.notifier("counter/");
        notifier
            .notify_with(Response::new(Code::NOT_FOUND))
            .await
            .unwrap();
        let gone = obs.next().await.unwrap().unwrap();
        assert_eq!(gone.code(), Code::NOT_FOUND);
        let end = obs.next().await.unwrap();
        assert!(matches!(end, Err(Error::Exchange(_))), "{end:?}");
        assert!(obs.next().await.is_none());
        assert_eq!(notifier.observer_count().await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn well_known_core_marks_observable_routes() {
    bounded(async {
        let app = Router::new().nest(
            "/sensors",
            counter_app(Arc::new(AtomicUsize::new(0)), Arc::new(watch::channel(0).0))
                .attributes("/counter", ResourceAttributes::new().rt("counter")),
        );
        let (addr, handle, _t) = serve(app).await;
        let client = Client::bind("127.0.0.1:0").await.unwrap();
        let doc = client
            .get(format!("coap://{addr}/.well-known/core?obs"))
            .await
            .unwrap();
        assert_eq!(
            doc.payload_str(),
            Some("</sensors/counter>;rt=\"counter\";obs")
        );
        let mut obs = client
            .observe(format!("coap://{addr}/sensors/counter"))
            .await
            .unwrap();
        assert!(obs.next().await.unwrap().unwrap().sequence().is_some());
        assert_eq!(
            handle
                .notifier("/sensors/counter")
                .observer_count()
                .await
                .unwrap(),
            1
        );
    })
    .await;
}
